//! The tests' independent view of an image, shared by the engine's conformance tests and the
//! shells' judge of results (`cloudimg-test-support`):
//!
//! * [`reference_luma`]: a source's luma from decoders the engine does not use (jpeg-decoder for
//!   JPEG, png for PNG) and the engine's documented rules, so a bug shared by the engine and its
//!   own decoders cannot hide;
//! * [`decode_output`]: a result (JPEG or PNG) decoded the same way, with the EXIF orientation it
//!   carries, and [`Gray::displayed`] to compare both as a viewer shows them;
//! * [`psnr`] and the bounds a result must reach against its own source: [`min_db`] per corpus
//!   class, measured on the corpus by `engine/tests/conformance.rs`;
//! * [`skip`] and [`corpus`]: the one rule for a test that cannot run here (loud, and a failure
//!   under `CI=true`) and where the corpus is.
#![forbid(unsafe_code)]

mod skip;

pub use skip::{corpus, record_skip, skip};

/// Every photo in the corpus's `bench/` and `bench-progressive/` must reach this PSNR at quality 85.
pub const PHOTO_MIN_DB: f64 = 38.0;

/// The class of a corpus file (a path relative to the corpus root): `bench`,
/// `bench-progressive`, or the three folders that name it, e.g. `conformance/jpeg/progressive`.
pub fn corpus_class(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["bench" | "bench-progressive", ..] => parts[0].to_string(),
        [a, b, c, _, ..] => format!("{a}/{b}/{c}"),
        _ => parts[..parts.len() - 1].join("/"),
    }
}

/// The lowest PSNR (dB, at quality 85, against [`reference_luma`] as displayed) a converted `ok`
/// file of `class` ([`corpus_class`]) may reach: [`PHOTO_MIN_DB`] for the photos; for every other
/// class the lowest file measured on this corpus, rounded down, kept as the bound (a drop below
/// it is a regression). Measured with `cargo test -p cloudimg-engine --test conformance --
/// --nocapture`, which prints the per-class table.
///
/// The low ones are tiny synthetic images (PngSuite's 5x5 palette patterns, a 32x23 progressive
/// test card, a 4x4 JPEG) whose hard edges at quality 85 cost PSNR in any JPEG encoder. A class
/// the table does not know yet gets infinity: it must be measured and added, not waved through.
pub fn min_db(class: &str) -> f64 {
    match class {
        "bench" | "bench-progressive" => PHOTO_MIN_DB,
        "bad/jpeg/exif" => 41.5,
        "conformance/jpeg/cmyk" => 36.5,
        "conformance/jpeg/colorspace" => 51.0,
        "conformance/jpeg/exif_orientation" => 34.0,
        "conformance/jpeg/grayscale" => 40.5,
        "conformance/jpeg/icc" => 40.0,
        "conformance/jpeg/misc" => 36.0,
        "conformance/jpeg/multi_image" => 44.0,
        "conformance/jpeg/odd_size" => 32.0,
        "conformance/jpeg/precision" => 49.0,
        "conformance/jpeg/progressive" => 31.0,
        "conformance/jpeg/restart" => 41.0,
        "conformance/jpeg/subsampling" => 34.5,
        "conformance/png/pngsuite" => 30.0,
        "conformance/png/real" => 33.0,
        _ => f64::INFINITY,
    }
}

/// An 8-bit gray image.
#[derive(Debug, Clone, PartialEq)]
pub struct Gray {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// BT.601 luma with Pillow's weights, the engine's documented formula.
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 32768) >> 16) as u8
}

/// Alpha over white, the engine's documented rule.
pub fn over_white(y: u8, a: u8) -> u8 {
    ((u32::from(y) * u32::from(a) + 255 * (255 - u32::from(a)) + 127) / 255) as u8
}

/// The reference luma of a source file, from decoders independent of the engine's
/// (jpeg-decoder for JPEG, png for PNG) and the documented rules: BT.601 luma, 16-bit samples
/// scaled by `round(v * 255 / 65535)`, alpha over white, CMYK ink to RGB by
/// `(255 - C) * (255 - K) / 255` rounded. As stored: apply the source's orientation with
/// [`Gray::displayed`].
pub fn reference_luma(data: &[u8]) -> Result<Gray, String> {
    if data.starts_with(b"\x89PNG") {
        png_luma(data)
    } else {
        reference_jpeg(data)
    }
}

fn reference_jpeg(data: &[u8]) -> Result<Gray, String> {
    let mut decoder = jpeg_decoder::Decoder::new(data);
    let pixels = decoder.decode().map_err(|e| format!("jpeg-decoder: {e}"))?;
    let info = decoder.info().ok_or("jpeg-decoder: no info")?;
    let (width, height) = (usize::from(info.width), usize::from(info.height));
    let pixels: Vec<u8> = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => pixels,
        jpeg_decoder::PixelFormat::L16 => pixels
            .chunks_exact(2)
            .map(|p| scale16(u16::from_be_bytes([p[0], p[1]])))
            .collect(),
        jpeg_decoder::PixelFormat::RGB24 => pixels
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        jpeg_decoder::PixelFormat::CMYK32 => pixels
            .chunks_exact(4)
            .map(|p| {
                let ink = |c: u8| ((255 - u32::from(c)) * (255 - u32::from(p[3])) + 127) / 255;
                luma(ink(p[0]) as u8, ink(p[1]) as u8, ink(p[2]) as u8)
            })
            .collect(),
    };
    Ok(Gray {
        width,
        height,
        pixels,
    })
}

fn scale16(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

/// A PNG's luma (a source's, or a gray PNG result's: gray stays gray), alpha over white.
fn png_luma(data: &[u8]) -> Result<Gray, String> {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(data));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(|e| format!("png: {e}"))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or("png: size overflow")?];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| format!("png: {e}"))?;
    buf.truncate(info.buffer_size());
    let samples: Vec<u8> = match info.bit_depth {
        png::BitDepth::Sixteen => buf
            .chunks_exact(2)
            .map(|p| scale16(u16::from_be_bytes([p[0], p[1]])))
            .collect(),
        png::BitDepth::Eight => buf,
        other => return Err(format!("png: unexpanded depth {other:?}")),
    };
    let pixels = match info.color_type {
        png::ColorType::Grayscale => samples,
        png::ColorType::GrayscaleAlpha => samples
            .chunks_exact(2)
            .map(|p| over_white(p[0], p[1]))
            .collect(),
        png::ColorType::Rgb => samples
            .chunks_exact(3)
            .map(|p| luma(p[0], p[1], p[2]))
            .collect(),
        png::ColorType::Rgba => samples
            .chunks_exact(4)
            .map(|p| over_white(luma(p[0], p[1], p[2]), p[3]))
            .collect(),
        png::ColorType::Indexed => return Err("png: palette not expanded".into()),
    };
    Ok(Gray {
        width: info.width as usize,
        height: info.height as usize,
        pixels,
    })
}

/// A result decoded by an independent decoder: its luma, how many channels it has, and the EXIF
/// orientation it carries (always 1 for PNG: viewers ignore it there, so the engine turns PNG
/// outputs upright).
pub struct Output {
    pub gray: Gray,
    pub channels: usize,
    pub orientation: u8,
}

/// Decodes a result: a JPEG with jpeg-decoder, or a PNG with png (a gray+alpha PNG's luma over
/// white, as its source's reference is). Whole: a truncated result is an error.
pub fn decode_output(data: &[u8]) -> Result<Output, String> {
    if data.starts_with(b"\x89PNG") {
        let channels = png::Decoder::new(std::io::Cursor::new(data))
            .read_info()
            .map_err(|e| format!("output does not decode: png: {e}"))?
            .info()
            .color_type
            .samples();
        let gray = png_luma(data).map_err(|e| format!("output does not decode: {e}"))?;
        return Ok(Output {
            gray,
            channels,
            orientation: 1,
        });
    }
    let mut decoder = jpeg_decoder::Decoder::new(data);
    let pixels = decoder
        .decode()
        .map_err(|e| format!("output does not decode: {e}"))?;
    let info = decoder.info().ok_or("output: no info")?;
    let channels = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => 1,
        jpeg_decoder::PixelFormat::L16 => 2,
        jpeg_decoder::PixelFormat::RGB24 => 3,
        jpeg_decoder::PixelFormat::CMYK32 => 4,
    };
    let orientation = decoder
        .exif_data()
        .and_then(|raw| exif::Reader::new().read_raw(raw.to_vec()).ok())
        .and_then(|e| {
            e.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                .and_then(|f| f.value.get_uint(0))
        })
        .map_or(1, |v| v as u8);
    let gray = Gray {
        width: usize::from(info.width),
        height: usize::from(info.height),
        pixels,
    };
    Ok(Output {
        gray,
        channels,
        orientation,
    })
}

impl Gray {
    /// The image as a viewer displays it under EXIF `orientation` (tags 1 to 8, as the EXIF
    /// standard defines them: 6 turns a quarter clockwise, 8 a quarter counter-clockwise).
    pub fn displayed(&self, orientation: u8) -> Gray {
        let (w, h) = (self.width, self.height);
        let (out_w, out_h) = if orientation >= 5 { (h, w) } else { (w, h) };
        let mut pixels = Vec::with_capacity(w * h);
        for y in 0..out_h {
            for x in 0..out_w {
                // Where the displayed pixel (x, y) is stored.
                let (sx, sy) = match orientation {
                    2 => (w - 1 - x, y),
                    3 => (w - 1 - x, h - 1 - y),
                    4 => (x, h - 1 - y),
                    5 => (y, x),
                    6 => (y, h - 1 - x),
                    7 => (w - 1 - y, h - 1 - x),
                    8 => (w - 1 - y, x),
                    _ => (x, y),
                };
                pixels.push(self.pixels[sy * w + sx]);
            }
        }
        Gray {
            width: out_w,
            height: out_h,
            pixels,
        }
    }
}

/// PSNR in dB of `a` against `b` (same size); infinite when equal.
pub fn psnr(a: &Gray, b: &Gray) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let se: u64 = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(&x, &y)| u64::from(x.abs_diff(y)).pow(2))
        .sum();
    if se == 0 {
        return f64::INFINITY;
    }
    let mse = se as f64 / a.pixels.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}
