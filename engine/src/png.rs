//! PNG sources: zune-png decodes, then every colour type and depth becomes 8-bit luma.

use crate::error::{Error, Result};
use crate::pixels::GrayImage;
use crate::{Format, Limits, Orientation, luma};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_core::result::DecodingResult;
use zune_png::PngDecoder;

/// What the PNG header says, read without decoding pixels.
pub(crate) struct PngHeader {
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
}

fn options(limits: &Limits) -> DecoderOptions {
    let max = limits.max_dimension as usize;
    DecoderOptions::default()
        .set_max_width(max)
        .set_max_height(max)
        .set_strict_mode(true)
        .png_set_confirm_crc(true)
        .inflate_set_confirm_adler(true)
        // The inflated size of a valid image is bounded by the pixel limit (16-bit RGBA plus a
        // filter byte per row); anything larger is a deflate bomb.
        .inflate_set_limit(
            usize::try_from(limits.max_pixels.saturating_mul(8).saturating_add(1 << 20))
                .unwrap_or(usize::MAX),
        )
}

fn invalid(e: impl std::fmt::Debug) -> Error {
    Error::invalid(Format::Png, format!("{e:?}"))
}

/// Reads the header and checks the limits before anything is allocated for pixels.
pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<PngHeader> {
    // IHDR is the first chunk: signature (8), length (4), "IHDR" (4), width (4), height (4).
    let (width, height) = match data.get(8..24) {
        Some(h) if &h[4..8] == b"IHDR" => (
            u32::from_be_bytes(h[8..12].try_into().expect("4 bytes")),
            u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")),
        ),
        _ => {
            return Err(Error::invalid(
                Format::Png,
                "expected an IHDR chunk right after the signature",
            ));
        }
    };
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            Format::Png,
            format!("the header declares {width}x{height} pixels"),
        ));
    }
    limits.check_dimensions(width, height)?;
    let mut decoder = PngDecoder::new_with_options(ZCursor::new(data), options(limits));
    decoder.decode_headers().map_err(invalid)?;
    let orientation = decoder
        .info()
        .and_then(|info| info.exif.as_deref())
        .map_or(Orientation::NORMAL, Orientation::from_exif);
    Ok(PngHeader {
        width,
        height,
        orientation,
    })
}

/// Decodes to 8-bit luma (and alpha, unless `flatten_alpha` composites it over white).
///
/// 16-bit samples are scaled to 8 bits with rounding, `round(v * 255 / 65535)`, before luma;
/// sub-byte gray and palettes are expanded by the decoder.
pub(crate) fn decode(data: &[u8], limits: &Limits, flatten_alpha: bool) -> Result<GrayImage> {
    let mut decoder = PngDecoder::new_with_options(ZCursor::new(data), options(limits));
    decoder.decode_headers().map_err(invalid)?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| invalid("no dimensions after the header"))?;
    let colorspace = decoder
        .colorspace()
        .ok_or_else(|| invalid("no colour type after the header"))?;
    let samples = match decoder.decode().map_err(invalid)? {
        DecodingResult::U8(v) => v,
        DecodingResult::U16(v) => v
            .iter()
            .map(|&s| ((u32::from(s) * 255 + 32767) / 65535) as u8)
            .collect(),
        _ => {
            return Err(Error::unsupported(
                "PNG sample format other than 8 or 16 bits",
            ));
        }
    };
    let channels = colorspace.num_components();
    if samples.len() != width * height * channels {
        return Err(Error::invalid(
            Format::Png,
            format!(
                "expected {} samples for {width}x{height}x{channels}, decoded {}",
                width * height * channels,
                samples.len()
            ),
        ));
    }
    let mut image = GrayImage::new(width, height);
    match colorspace {
        ColorSpace::Luma => image.luma = samples,
        ColorSpace::LumaA => {
            let pairs = samples.chunks_exact(2);
            if flatten_alpha {
                image.luma = pairs.map(|p| luma::over_white(p[0], p[1])).collect();
            } else {
                (image.luma, image.alpha) = (
                    pairs.clone().map(|p| p[0]).collect(),
                    Some(pairs.map(|p| p[1]).collect()),
                );
            }
        }
        ColorSpace::RGB => luma::rgb(&samples, &mut image.luma),
        ColorSpace::RGBA if flatten_alpha => luma::rgba_over_white(&samples, &mut image.luma),
        ColorSpace::RGBA => {
            luma::rgba(&samples, &mut image.luma);
            image.alpha = Some(samples.chunks_exact(4).map(|p| p[3]).collect());
        }
        other => return Err(Error::unsupported(format!("PNG colour space {other:?}"))),
    }
    Ok(image)
}
