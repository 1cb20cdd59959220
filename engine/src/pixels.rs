//! The pixel path's common ground: a decoded luma plane and its encoders.

use crate::Orientation;
use crate::error::{Error, Result};
use zune_core::bit_depth::BitDepth;
use zune_core::colorspace::ColorSpace;
use zune_core::options::EncoderOptions;

/// A decoded image reduced to 8-bit luma, with alpha kept separately where the output keeps it.
pub(crate) struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
    pub alpha: Option<Vec<u8>>,
}

impl GrayImage {
    pub fn new(width: usize, height: usize) -> Self {
        GrayImage {
            width,
            height,
            luma: vec![0; width * height],
            alpha: None,
        }
    }

    /// A gray (or gray+alpha) 8-bit PNG, rotated to display upright: PNG viewers ignore EXIF.
    /// Returns the bytes and the stored width and height.
    pub fn encode_png(&self, orientation: Orientation) -> Result<(Vec<u8>, usize, usize)> {
        let (pixels, colorspace) = match &self.alpha {
            None => (self.luma.clone(), ColorSpace::Luma),
            Some(alpha) => (
                self.luma
                    .iter()
                    .zip(alpha)
                    .flat_map(|(&y, &a)| [y, a])
                    .collect(),
                ColorSpace::LumaA,
            ),
        };
        let channels = colorspace.num_components();
        let (pixels, width, height) = orientation.apply(&pixels, self.width, self.height, channels);
        let options = EncoderOptions::new(width, height, colorspace, BitDepth::Eight);
        let mut out = Vec::with_capacity(pixels.len() / 2 + 1024);
        zune_png::PngEncoder::new(&pixels, options)
            .encode(&mut out)
            .map_err(|e| Error::Internal(format!("PNG encoder: {e:?}")))?;
        Ok((out, width, height))
    }
}
