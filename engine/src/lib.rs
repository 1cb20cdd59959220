//! cloudimg's engine: bytes in, grayscale bytes out.
//!
//! Pure and synchronous: no I/O, no network, one image per call on the calling thread. Parallelism
//! lives in [`batch`]. The shells know nothing about pixels beyond this API.
//!
//! ```no_run
//! let photo = std::fs::read("photo.jpg")?;
//! let gray = cloudimg_engine::convert(&photo, &cloudimg_engine::Options::default())?;
//! std::fs::write("photo-gray.jpg", &gray.data)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Two paths, chosen per input:
//! * **pixels** (every other format, each behind the one decode interface of `decode`; CMYK/YCCK
//!   and RGB JPEGs; anything [`PathChoice::Pixels`] forces): decode, reduce to BT.601 luma,
//!   encode a one-channel JPEG (or PNG).
//! * **coefficients** (Huffman-coded 8-bit gray and YCbCr JPEGs): the luma channel's DCT
//!   coefficients go straight to the output without a pixel ever existing.

pub mod batch;
mod cancel;
mod decode;
mod error;
mod estimate;
mod jpeg;
mod luma;
mod options;
mod orientation;
mod pixels;
mod sniff;
#[doc(hidden)]
pub mod stages;

use std::time::{Duration, Instant};

pub use cancel::Cancel;
pub use error::{Error, ErrorKind, LimitKind, Result};
pub use estimate::{Estimate, estimate};
pub use luma::SimdPath;
pub use options::{Limits, Options, OutputFormat, PathChoice, Quality};
pub use orientation::Orientation;
pub use sniff::{Format, SNIFF_BYTES, sniff};

/// What a header says about an image, read without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub format: Format,
    /// Stored width, before orientation.
    pub width: u32,
    /// Stored height, before orientation.
    pub height: u32,
    pub orientation: Orientation,
}

impl ImageInfo {
    /// Width and height as the image displays, after its orientation.
    pub fn displayed_size(&self) -> (u32, u32) {
        self.orientation.displayed(self.width, self.height)
    }
}

/// Which path a conversion took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversionPath {
    /// Decoded to pixels and encoded again.
    Pixels,
    /// Luma DCT coefficients moved to the output directly.
    Coefficients,
}

/// A stage of a conversion, for timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Pixel path: decoding to samples.
    Decode,
    /// Pixel path: reducing samples to luma.
    Luma,
    /// Pixel path: encoding the output.
    Encode,
    /// Coefficient path: reading the entropy-coded coefficients.
    EntropyDecode,
    /// Coefficient path: mapping coefficients to the output's quantization.
    Requantize,
    /// Coefficient path: writing the entropy-coded output.
    EntropyEncode,
}

impl Stage {
    pub const ALL: [Stage; 6] = [
        Stage::Decode,
        Stage::Luma,
        Stage::Encode,
        Stage::EntropyDecode,
        Stage::Requantize,
        Stage::EntropyEncode,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Luma => "luma",
            Stage::Encode => "encode",
            Stage::EntropyDecode => "entropy decode",
            Stage::Requantize => "requantize",
            Stage::EntropyEncode => "entropy encode",
        }
    }
}

/// Time spent per [`Stage`] in one conversion (or summed over many).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageTimes([Duration; 6]);

impl StageTimes {
    pub fn get(&self, stage: Stage) -> Duration {
        self.0[stage as usize]
    }

    pub fn add(&mut self, stage: Stage, time: Duration) {
        self.0[stage as usize] += time;
    }

    /// Runs `f`, adding its wall time to `stage`.
    pub(crate) fn time<T>(&mut self, stage: Stage, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = f();
        self.add(stage, start.elapsed());
        out
    }
}

impl std::ops::AddAssign for StageTimes {
    fn add_assign(&mut self, other: StageTimes) {
        for stage in Stage::ALL {
            self.add(stage, other.get(stage));
        }
    }
}

/// A converted image.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The encoded output file.
    pub data: Vec<u8>,
    pub format: OutputFormat,
    /// Stored width of the output.
    pub width: u32,
    /// Stored height of the output.
    pub height: u32,
    /// The orientation the output carries in its EXIF: `NORMAL` when the output was turned
    /// upright (always on the pixel path; on the coefficient path wherever the blocks line up
    /// with the image's edges), the source's otherwise.
    pub orientation: Orientation,
    pub source: ImageInfo,
    pub path: ConversionPath,
    pub stages: StageTimes,
}

impl Converted {
    /// Width and height as the output displays (equal to the source's displayed size).
    pub fn displayed_size(&self) -> (u32, u32) {
        self.orientation.displayed(self.width, self.height)
    }
}

/// The SIMD path this process's kernels use.
pub fn simd_path() -> SimdPath {
    SimdPath::detect()
}

/// The parsed header: JPEG, the fast special case, or any other format behind the decode
/// interface.
enum Header {
    Jpeg(jpeg::markers::Frame),
    Pixels(Box<dyn decode::Source>),
}

fn read_header(data: &[u8], limits: &Limits) -> Result<(ImageInfo, Header)> {
    read_header_at(data, limits, decode::Depth::Full)
}

/// [`read_header`] to the given depth: [`decode::Depth::Layout`] reads what the estimate needs
/// without handing the file to a decoding library (zune-png copies the compressed data as it
/// reads).
fn read_header_at(
    data: &[u8],
    limits: &Limits,
    depth: decode::Depth,
) -> Result<(ImageInfo, Header)> {
    limits.check_input_len(data.len())?;
    match sniff(data)? {
        Format::Jpeg => {
            let frame = jpeg::read_frame(data, limits)?;
            // Only a progressive scan can be a few bytes that walk the whole image again: a
            // sequential scan codes every block it covers, so its work is bounded by its own
            // bytes (and the decoders count scans as they go). Sparing sequential photos the walk
            // over every marker of their entropy data keeps `probe` cheap on every upload.
            if frame.coding == jpeg::markers::Coding::Progressive {
                jpeg::check_scan_count(data, limits)?;
            }
            let info = ImageInfo {
                format: Format::Jpeg,
                width: frame.width,
                height: frame.height,
                orientation: frame.orientation,
            };
            Ok((info, Header::Jpeg(frame)))
        }
        format => {
            let source = decode::read_header(format, data, limits, depth)?;
            let geometry = source.geometry();
            let info = ImageInfo {
                format,
                width: geometry.width,
                height: geometry.height,
                orientation: geometry.orientation,
            };
            Ok((info, Header::Pixels(source)))
        }
    }
}

/// Reads the header: format, size and orientation, checking every limit. Allocates nothing for
/// pixels, so it is cheap enough to run on every upload before accepting it.
pub fn probe(data: &[u8], limits: &Limits) -> Result<ImageInfo> {
    read_header(data, limits).map(|(info, _)| info)
}

/// Converts one image to grayscale.
pub fn convert(data: &[u8], options: &Options) -> Result<Converted> {
    convert_cancellable(data, options, &Cancel::NEVER)
}

/// [`convert`], ending with [`Error::Cancelled`] soon after `cancel` is set from another thread
/// (between scans and rows), with everything it allocated freed.
pub fn convert_cancellable(data: &[u8], options: &Options, cancel: &Cancel) -> Result<Converted> {
    cancel.check()?;
    let (source, header) = read_header(data, &options.limits)?;
    let mut stages = StageTimes::default();
    let image = match header {
        Header::Jpeg(frame) => {
            if takes_coefficients(&frame, options) {
                let output = jpeg::transcode(
                    data,
                    &frame,
                    &options.limits,
                    cancel,
                    options.quality,
                    &mut stages,
                )?;
                return Ok(Converted {
                    data: output.data,
                    format: OutputFormat::Jpeg,
                    width: output.width,
                    height: output.height,
                    orientation: output.orientation,
                    source,
                    path: ConversionPath::Coefficients,
                    stages,
                });
            }
            jpeg::decode_pixels(data, &frame, &options.limits, cancel, &mut stages)?
        }
        Header::Pixels(source) => {
            let flatten_alpha = options.format == OutputFormat::Jpeg;
            stages.time(Stage::Decode, || {
                source.decode(data, &options.limits, cancel, flatten_alpha)
            })?
        }
    };
    // Most decoding libraries cannot be stopped inside their call: the flag is looked at on its
    // way out.
    cancel.check()?;
    encode_pixels(image, source, options, cancel, stages)
}

/// Whether a JPEG takes the coefficient path.
fn takes_coefficients(frame: &jpeg::markers::Frame, options: &Options) -> bool {
    options.format == OutputFormat::Jpeg
        && options.path == PathChoice::Auto
        && jpeg::has_luma_coefficients(frame)
}

fn encode_pixels(
    image: pixels::GrayImage,
    source: ImageInfo,
    options: &Options,
    cancel: &Cancel,
    mut stages: StageTimes,
) -> Result<Converted> {
    // Only a JPEG source has quantization to keep; every other source takes the default.
    let quality = match options.quality {
        Quality::Level(q) => q,
        Quality::Source => 85,
    };
    let image = image.upright(source.orientation);
    cancel.check()?;
    let data = stages.time(Stage::Encode, || match options.format {
        OutputFormat::Jpeg => {
            jpeg::encode_plane(&image.luma, image.width, image.height, quality, cancel)
        }
        OutputFormat::Png => image.encode_png(),
    })?;
    Ok(Converted {
        data,
        format: options.format,
        width: image.width as u32,
        height: image.height as u32,
        orientation: Orientation::NORMAL,
        source,
        path: ConversionPath::Pixels,
        stages,
    })
}
