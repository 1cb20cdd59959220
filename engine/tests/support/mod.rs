//! Shared by the engine's integration tests: the corpus, an independent reference decoder, and
//! image comparisons.
#![allow(dead_code)] // each test binary uses a different part

pub mod counting;
pub mod fixtures;
pub mod libjpeg;
pub mod pillow;

use std::path::{Path, PathBuf};

/// A test that cannot run here says so, loudly. Under `CI=true` a missing prerequisite is a
/// failure (the panic), never a pass. Elsewhere the test passes, the line `SKIPPED: <reason>`
/// goes to stderr, and the reason is appended to the file `CLOUDIMG_SKIP_LOG` names (set by
/// `scripts/test.sh`, which counts the lines at the end: cargo captures a passing test's stderr,
/// so a printed line alone would be lost). Returns `None` so callers can write
/// `let Some(x) = ... else { return skip(...) }`.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}: under CI=true this test must run, not skip");
    }
    record_skip(reason);
    None
}

/// Prints and logs a skip without the CI rule: for tests a run opts into (the long ones).
pub fn record_skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(log) = std::env::var_os("CLOUDIMG_SKIP_LOG") {
        // One short write per line with O_APPEND: lines from parallel tests never interleave.
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!(
                "cannot append to CLOUDIMG_SKIP_LOG {}: {e}",
                log.to_string_lossy()
            );
        }
    }
}

/// The corpus root: `CLOUDIMG_CORPUS`, else `../shared/corpus` from the workspace root; a skip
/// (see [`skip`]) where it is absent.
pub fn corpus() -> Option<PathBuf> {
    let root = std::env::var_os("CLOUDIMG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    if root.join("MANIFEST.tsv").is_file() {
        return Some(root);
    }
    skip(&format!(
        "corpus absent: no {} (set CLOUDIMG_CORPUS)",
        root.join("MANIFEST.tsv").display()
    ))
}

/// One row of MANIFEST.tsv.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub details: String,
    pub expect: String,
    /// The `format` column: `JPEG`, `PNG`, `WEBP`, `BMP`, ...
    pub format: String,
}

impl Entry {
    /// The directory that names the file's class, e.g. `conformance/jpeg/progressive`.
    pub fn class(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').collect();
        match parts.as_slice() {
            ["bench" | "bench-progressive", ..] => parts[0].to_string(),
            [a, b, c, _, ..] => format!("{a}/{b}/{c}"),
            _ => parts[..parts.len() - 1].join("/"),
        }
    }

    /// The EXIF orientation the manifest records (1 when there is none).
    pub fn orientation(&self) -> u8 {
        self.detail("exif_orientation")
            .and_then(|v| v.parse().ok())
            .filter(|v| (1..=8).contains(v))
            .unwrap_or(1)
    }

    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details
            .split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// Width and height as the source displays.
    pub fn displayed(&self) -> (u32, u32) {
        if self.orientation() >= 5 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

pub fn manifest(root: &Path) -> Vec<Entry> {
    manifest_named(root, "MANIFEST.tsv")
}

/// The rows of `name`, a manifest with MANIFEST.tsv's columns (MANIFEST-formats.tsv).
pub fn manifest_named(root: &Path, name: &str) -> Vec<Entry> {
    let text =
        std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (path, width, height, details, expect, format) = (
        col("path"),
        col("width"),
        col("height"),
        col("details"),
        col("expect"),
        col("format"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Entry {
                path: f[path].to_string(),
                width: f[width].parse().unwrap_or(0),
                height: f[height].parse().unwrap_or(0),
                details: f[details].to_string(),
                expect: f[expect].to_string(),
                format: f[format].to_string(),
            }
        })
        .collect()
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
/// `(255 - C) * (255 - K) / 255` rounded.
pub fn reference_luma(data: &[u8]) -> Result<Gray, String> {
    if data.starts_with(b"\x89PNG") {
        reference_png(data)
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

fn reference_png(data: &[u8]) -> Result<Gray, String> {
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

/// An output JPEG decoded by jpeg-decoder: its luma, whether it has one channel, and the EXIF
/// orientation it carries.
pub struct Output {
    pub gray: Gray,
    pub channels: usize,
    pub orientation: u8,
}

pub fn decode_output(data: &[u8]) -> Result<Output, String> {
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
