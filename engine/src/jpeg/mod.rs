//! JPEG sources.

pub(crate) mod markers;

use crate::error::{Error, Result};
use crate::pixels::GrayImage;
use crate::{Format, Limits, luma};
use markers::{ColorKind, Frame};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub(crate) use markers::read_frame;

/// Decodes to pixels with zune-jpeg (strict mode) and reduces them to luma.
pub(crate) fn decode_pixels(data: &[u8], frame: &Frame, limits: &Limits) -> Result<GrayImage> {
    let out = match frame.color {
        ColorKind::Gray | ColorKind::YCbCr => ColorSpace::Luma,
        ColorKind::Rgb | ColorKind::Cmyk | ColorKind::Ycck => ColorSpace::RGB,
    };
    let max = limits.max_dimension as usize;
    let options = DecoderOptions::default()
        .set_max_width(max)
        .set_max_height(max)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(out);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    let pixels = decoder
        .decode()
        .map_err(|e| Error::invalid(Format::Jpeg, format!("{e:?}")))?;
    let (width, height) = (frame.width as usize, frame.height as usize);
    let mut image = GrayImage::new(width, height);
    let channels = out.num_components();
    if pixels.len() != width * height * channels {
        return Err(Error::invalid(
            Format::Jpeg,
            format!(
                "expected {} decoded samples, found {}",
                width * height * channels,
                pixels.len()
            ),
        ));
    }
    if channels == 1 {
        image.luma = pixels;
    } else {
        luma::rgb(&pixels, &mut image.luma);
    }
    Ok(image)
}
