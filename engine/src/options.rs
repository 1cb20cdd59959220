//! What the caller asks for: output format, quality and limits.

use crate::error::{Error, LimitKind, Result};

/// How a conversion is done. `Options::default()` is what `cloudimg convert` does with no flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// JPEG quality of the output. Default: 85.
    pub quality: Quality,
    /// Output container. Default: JPEG.
    pub format: OutputFormat,
    /// Checked from the header before any pixel buffer is allocated. Default: [`Limits::default`].
    pub limits: Limits,
    /// Which path a JPEG takes. Default: [`PathChoice::Auto`] (coefficients where possible).
    pub path: PathChoice,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quality: Quality::DEFAULT,
            format: OutputFormat::Jpeg,
            limits: Limits::default(),
            path: PathChoice::Auto,
        }
    }
}

/// JPEG output quality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    /// The libjpeg quality scale, 1 to 100, applied to the standard luminance table.
    Level(u8),
    /// Keep the source's own luminance quantization (JPEG sources on the coefficient path);
    /// other sources fall back to [`Quality::DEFAULT`].
    Source,
}

impl Quality {
    pub const DEFAULT: Quality = Quality::Level(85);

    /// Parses `1`..=`100` or `source`.
    pub fn parse(text: &str) -> Result<Quality, String> {
        if text.eq_ignore_ascii_case("source") {
            return Ok(Quality::Source);
        }
        match text.parse::<u8>() {
            Ok(q @ 1..=100) => Ok(Quality::Level(q)),
            _ => Err(format!(
                "quality must be 1 to 100 or `source`, found `{text}`"
            )),
        }
    }
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quality::Level(q) => write!(f, "{q}"),
            Quality::Source => f.write_str("source"),
        }
    }
}

impl std::str::FromStr for Quality {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Quality::parse(s)
    }
}

/// The output container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// One-channel baseline JPEG; alpha is composited over white.
    Jpeg,
    /// Gray or gray+alpha 8-bit PNG.
    Png,
}

impl OutputFormat {
    /// The file extension, without a dot.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Png => "png",
        }
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
        }
    }
}

/// Which path a JPEG source takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathChoice {
    /// Coefficients straight to the output where the source allows it, pixels otherwise.
    #[default]
    Auto,
    /// Always decode to pixels and encode again (for comparisons and benchmarks).
    Pixels,
}

/// Input limits, checked from the header before any pixel buffer is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest input accepted, in bytes. Default: 100 MiB.
    pub max_input_bytes: u64,
    /// Largest width times height. Default: 100 megapixels (a 108 MP phone photo is the largest
    /// common camera image; past that it is a scan or a bomb).
    pub max_pixels: u64,
    /// Largest width or height. Default: 65,535 (the largest a JPEG can hold).
    pub max_dimension: u32,
    /// Most scans (SOS segments) one JPEG may hold. Default: 100, zune-jpeg's own cap. A
    /// progressive photo has about 10; each scan walks the whole image again, so without a cap a
    /// small upload repeating one scan thousands of times buys minutes of CPU.
    pub max_scans: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 100 << 20,
            max_pixels: 100_000_000,
            max_dimension: 65_535,
            max_scans: 100,
        }
    }
}

impl Limits {
    pub(crate) fn check_input_len(&self, len: usize) -> Result<()> {
        check(LimitKind::InputBytes, len as u64, self.max_input_bytes)
    }

    pub(crate) fn check_dimensions(&self, width: u32, height: u32) -> Result<()> {
        check(LimitKind::Width, width.into(), self.max_dimension.into())?;
        check(LimitKind::Height, height.into(), self.max_dimension.into())?;
        check(
            LimitKind::Pixels,
            u64::from(width) * u64::from(height),
            self.max_pixels,
        )
    }

    /// Called as each scan is met, with the number met so far (this one included).
    pub(crate) fn check_scans(&self, scans: u32) -> Result<()> {
        check(LimitKind::Scans, scans.into(), self.max_scans.into())
    }
}

fn check(limit: LimitKind, found: u64, max: u64) -> Result<()> {
    if found > max {
        Err(Error::OverLimit { limit, found, max })
    } else {
        Ok(())
    }
}
