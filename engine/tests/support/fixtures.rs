//! Images generated in the tests, so that nothing from the corpus is copied into the repository.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

/// A `width` x `height` RGB picture with gradients, edges and noise, like a photo's mix.
pub fn rgb_picture(width: usize, height: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        (state % 24) as i32 - 12
    };
    let mut rgb = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            let band = if (x / 37 + y / 29) % 2 == 0 { 60 } else { 0 };
            let r = (x * 255 / width.max(1)) as i32 + band + noise();
            let g = (y * 255 / height.max(1)) as i32 + noise();
            let b = (((x + y) * 255) / (width + height).max(1)) as i32 - band + noise();
            rgb.extend([r, g, b].map(|v| v.clamp(0, 255) as u8));
        }
    }
    rgb
}

/// How a generated JPEG is coded.
#[derive(Clone, Copy)]
pub struct JpegSpec {
    pub width: u16,
    pub height: u16,
    pub quality: u8,
    pub progressive: bool,
    pub sampling: SamplingFactor,
    /// EXIF orientation to write (1 writes none).
    pub orientation: u8,
}

impl Default for JpegSpec {
    fn default() -> Self {
        JpegSpec {
            width: 320,
            height: 240,
            quality: 92,
            progressive: false,
            sampling: SamplingFactor::R_4_2_0,
            orientation: 1,
        }
    }
}

/// A colour JPEG of the generated picture.
pub fn jpeg(spec: JpegSpec) -> Vec<u8> {
    let rgb = rgb_picture(usize::from(spec.width), usize::from(spec.height));
    let mut out = Vec::new();
    let mut encoder = Encoder::new(&mut out, spec.quality);
    encoder.set_progressive(spec.progressive);
    encoder.set_sampling_factor(spec.sampling);
    if spec.orientation != 1 {
        encoder
            .add_app_segment(1, exif_orientation(spec.orientation))
            .expect("EXIF segment");
    }
    encoder
        .encode(&rgb, spec.width, spec.height, ColorType::Rgb)
        .expect("encodes");
    out
}

/// An APP1 payload carrying only an orientation tag.
pub fn exif_orientation(value: u8) -> Vec<u8> {
    let mut app1 = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
    app1.extend_from_slice(&[0, value, 0, 0, 0, 0, 0, 0]);
    app1
}

/// A PNG of `samples` (row-major) with the given colour type and depth.
pub fn png(
    width: u32,
    height: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    samples: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(depth);
    encoder
        .write_header()
        .expect("header")
        .write_image_data(samples)
        .expect("data");
    out
}
