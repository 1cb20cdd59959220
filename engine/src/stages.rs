//! The engine's stages one at a time, for the criterion benches: not a stable API.
//!
//! A conversion fuses its stages (requantization runs inside the entropy encoder, decoding
//! hands each MCU row straight to encoding), so timing them apart needs these entry points.

use crate::error::{Error, Result};
use crate::jpeg::{self, Coefficients};
use crate::{Cancel, Limits, luma};

/// Entropy-decodes a gray or YCbCr JPEG's luma coefficients and drops them; returns the number
/// of blocks. What the coefficient path spends before encoding.
pub fn entropy_decode(data: &[u8]) -> Result<usize> {
    let frame = jpeg::read_frame(data, &Limits::default())?;
    jpeg::count_luma_blocks(data, &frame)
}

/// A JPEG's luma coefficients, decoded once, to time encoding alone.
pub struct DecodedCoefficients(Coefficients);

impl DecodedCoefficients {
    pub fn decode(data: &[u8]) -> Result<Self> {
        let frame = jpeg::read_frame(data, &Limits::default())?;
        jpeg::collect_luma(data, &frame).map(DecodedCoefficients)
    }

    /// Requantizes to `quality` and entropy-encodes: the coefficient path's encoding stage.
    pub fn encode(&self, quality: u8) -> Result<Vec<u8>> {
        self.0.encode(quality)
    }
}

/// Decodes a gray or YCbCr JPEG to its luma plane (entropy decoding and the inverse DCT):
/// the pixel path's decode. Returns the plane, width and height.
pub fn decode_luma_plane(data: &[u8]) -> Result<(Vec<u8>, usize, usize)> {
    let frame = jpeg::read_frame(data, &Limits::default())?;
    if !jpeg::has_luma_coefficients(&frame) {
        return Err(Error::unsupported(
            "a JPEG without full-resolution luma coefficients",
        ));
    }
    let mut stages = crate::StageTimes::default();
    let never = Cancel::NEVER;
    let image = jpeg::decode_pixels(data, &frame, &Limits::default(), &never, &mut stages)?;
    Ok((image.luma, image.width, image.height))
}

/// The pixel path's encode: forward DCT, quantization and entropy coding of a luma plane.
pub fn encode_luma_plane(
    plane: &[u8],
    width: usize,
    height: usize,
    quality: u8,
) -> Result<Vec<u8>> {
    jpeg::encode_plane(plane, width, height, quality, &Cancel::NEVER)
}

/// Packed RGB to luma with the kernel this CPU runs.
pub fn rgb_to_luma(rgb: &[u8], out: &mut [u8]) {
    luma::rgb(rgb, out);
}

/// Packed RGB to luma with the scalar reference.
pub fn rgb_to_luma_scalar(rgb: &[u8], out: &mut [u8]) {
    luma::scalar_rgb(rgb, out);
}
