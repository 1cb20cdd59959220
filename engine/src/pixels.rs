//! The pixel path's common ground: a decoded luma plane, turned upright, and its PNG encoder.

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

    /// The image as it displays: pixels moved by `orientation`, so the output needs no tag.
    pub fn upright(self, orientation: Orientation) -> GrayImage {
        let (luma, width, height) = orientation.apply(self.luma, self.width, self.height, 1);
        let alpha = self
            .alpha
            .map(|alpha| orientation.apply(alpha, self.width, self.height, 1).0);
        GrayImage {
            width,
            height,
            luma,
            alpha,
        }
    }

    /// A gray (or gray+alpha) 8-bit PNG.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let (interleaved, colorspace);
        let pixels = match &self.alpha {
            None => {
                colorspace = ColorSpace::Luma;
                &self.luma
            }
            Some(alpha) => {
                colorspace = ColorSpace::LumaA;
                // Sized up front: collecting a `flat_map` would double its way there.
                let mut pairs = Vec::with_capacity(2 * self.luma.len());
                pairs.extend(self.luma.iter().zip(alpha).flat_map(|(&y, &a)| [y, a]));
                interleaved = pairs;
                &interleaved
            }
        };
        let options = EncoderOptions::new(self.width, self.height, colorspace, BitDepth::Eight);
        let mut out = Vec::with_capacity(pixels.len() / 2 + 1024);
        zune_png::PngEncoder::new(pixels, options)
            .encode(&mut out)
            .map_err(|e| Error::Internal(format!("PNG encoder: {e:?}")))?;
        Ok(out)
    }
}
