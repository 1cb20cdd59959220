//! How much heap a conversion will take, from the header alone: for admitting jobs by a memory
//! budget before any of that memory exists.
//!
//! The estimate replays the conversion's large allocations in the order the conversion makes
//! them, per format and path, and keeps the most that is live at once. What the header cannot
//! say is taken at a bound that real files stay under: the scan data as large as the file, a
//! JPEG output as large as twice the buffer its encoder starts with (half the input on the
//! coefficient path, 1.3 bits per pixel on the pixel path) and at least half a bit per pixel; an
//! output beyond that doubles its buffer once more than estimated. Restart intervals are taken
//! from a DRI before the first scan.
//! `tests/memory.rs` holds every corpus file to `measured <= estimate <= 2 x measured + 1 MiB`.

use crate::decode::Depth;
use crate::jpeg::markers::{Coding, Frame};
use crate::{
    ConversionPath, Header, ImageInfo, Options, OutputFormat, Result, jpeg, read_header_at,
};

/// The heap a conversion of one input will use at its peak, and what it will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The most heap live at once, in bytes, the output included (not the input).
    pub peak_bytes: u64,
    /// The path the conversion will take.
    pub path: ConversionPath,
    pub source: ImageInfo,
}

/// Estimates the peak heap of `convert(data, options)` from the header, running the same limit
/// checks as [`crate::convert`] (the scan count included) and allocating nothing for pixels.
pub fn estimate(data: &[u8], options: &Options) -> Result<Estimate> {
    let (source, header) = read_header_at(data, &options.limits, Depth::Layout)?;
    let (width, height) = (u64::from(source.width), u64::from(source.height));
    let mut heap = Heap::default();
    heap.alloc(FIXED);
    let path = match header {
        Header::Jpeg(frame) => {
            if crate::takes_coefficients(&frame, options) {
                coefficients(&mut heap, &frame, data.len() as u64);
                ConversionPath::Coefficients
            } else {
                let luma = jpeg_pixels(&mut heap, &frame, data.len() as u64);
                encode(&mut heap, &source, options, luma, false);
                ConversionPath::Pixels
            }
        }
        Header::Pixels(decoder) => {
            let flatten = options.format == OutputFormat::Jpeg;
            let alpha = decoder.estimate(&mut heap, flatten);
            encode(&mut heap, &source, options, width * height, alpha);
            ConversionPath::Pixels
        }
    };
    Ok(Estimate {
        peak_bytes: heap.peak,
        path,
        source,
    })
}

/// What every conversion holds besides its buffers: Huffman tables (a sequential AC table
/// 26 KB, a progressive one 6 KB, a DC one 3 KB; at most four of each kind live and one being
/// replaced: 143 KB), encoder tables, small vectors.
const FIXED: u64 = 256 << 10;

/// The replayed heap: what is live, and the most that has been. Each format's
/// [`crate::decode::Source::estimate`] replays its decode on it.
#[derive(Default)]
pub(crate) struct Heap {
    live: u64,
    peak: u64,
}

impl Heap {
    pub fn alloc(&mut self, bytes: u64) {
        self.live += bytes;
        self.peak = self.peak.max(self.live);
    }

    pub fn free(&mut self, bytes: u64) {
        self.live -= bytes;
    }
}

const BLOCK: u64 = jpeg::BLOCK_BYTES as u64;

/// The engine's own JPEG decoder: returns the bytes it holds until it finishes. The scan data is
/// copied out of the file, destuffed (at most the file), and where restart markers are, their
/// offsets, one per interval of the scan with the most MCUs (a scan of luma alone has one per
/// block), in a doubling vector.
fn own_decoder(heap: &mut Heap, frame: &Frame, input: u64) -> u64 {
    let (padded_w, padded_h) = frame.padded_luma_blocks();
    let (padded_w, padded_h) = (padded_w as u64, padded_h as u64);
    let blocks = match frame.coding {
        // The whole luma plane, MCU-padded, through every scan.
        Coding::Progressive => padded_w * padded_h,
        // One band of MCU rows.
        Coding::Sequential => padded_w * u64::from(frame.components[0].v),
    };
    let restarts = match frame.restart_interval {
        0 => 0,
        every => 2 * 8 * (padded_w * padded_h).div_ceil(u64::from(every)),
    };
    let bytes = blocks * BLOCK + input + restarts;
    heap.alloc(bytes);
    bytes
}

/// The coefficient path: the output's buffer, the decoder, and, where the image is turned
/// upright in the DCT domain, its kept blocks and output band.
fn coefficients(heap: &mut Heap, frame: &Frame, input: u64) {
    if jpeg::turns_upright(frame) {
        heap.alloc(jpeg::turning_bytes(frame.width, frame.height) as u64);
    }
    // The output's buffer doubles from half the input as the output needs: taken as large as
    // the input, and at least half a bit per pixel (a source compressed harder than the output
    // grows in requantizing).
    let start = jpeg::transcode_capacity(input as usize) as u64;
    let pixels = u64::from(frame.width) * u64::from(frame.height);
    heap.alloc(grown(start, 2 * start).max(grown(start, pixels / 16 + 1024)));
    own_decoder(heap, frame, input);
}

/// The pixel path's JPEG decode; returns the bytes of the luma plane it leaves.
fn jpeg_pixels(heap: &mut Heap, frame: &Frame, input: u64) -> u64 {
    let (width, height) = (u64::from(frame.width), u64::from(frame.height));
    let pixels = width * height;
    if jpeg::has_luma_coefficients(frame) {
        // The inverse DCT writes a plane padded to whole blocks; cropping copies it.
        let (blocks_w, blocks_h) = frame.component_blocks(0);
        let plane = (blocks_w * blocks_h * 64) as u64;
        heap.alloc(plane);
        let decoder = own_decoder(heap, frame, input);
        heap.free(decoder);
        if blocks_w as u64 * 8 == width {
            return plane;
        }
        heap.alloc(pixels);
        heap.free(plane);
        return pixels;
    }
    // zune-jpeg: progressive files keep every component's coefficients (two bytes each, padded
    // to whole MCUs) and their samples; then the RGB output, then the luma computed from it.
    let (mcus_x, mcus_y) = frame.mcus();
    let coefficients: u64 = match frame.coding {
        Coding::Progressive => frame
            .components
            .iter()
            .map(|c| (mcus_x * mcus_y * usize::from(c.h) * usize::from(c.v) * 64 * 3) as u64)
            .sum(),
        Coding::Sequential => 0,
    };
    heap.alloc(coefficients + 3 * pixels);
    heap.free(coefficients);
    heap.alloc(pixels);
    heap.free(3 * pixels);
    pixels
}

/// The pixel path's end: turning upright (a copy of each plane), then encoding. `luma` is the
/// bytes the luma plane holds (a cropped view of a padded plane holds the padding too).
fn encode(heap: &mut Heap, source: &ImageInfo, options: &Options, luma: u64, alpha: bool) {
    let pixels = u64::from(source.width) * u64::from(source.height);
    let alpha_bytes = if alpha { pixels } else { 0 };
    if source.orientation.value() != 1 {
        heap.alloc(pixels + alpha_bytes);
        heap.free(luma + alpha_bytes);
    }
    match options.format {
        // The encoder's buffer, taken as doubled once.
        OutputFormat::Jpeg => heap.alloc(2 * jpeg::encode_capacity(pixels as usize) as u64),
        OutputFormat::Png => {
            // zune-png stores the samples uncompressed: the rows filtered (a filter byte each),
            // a first output buffer it replaces by one of twice the rows before freeing it, then
            // our output vector, doubling from half the samples until it holds the file.
            let samples = pixels + alpha_bytes;
            let filtered = samples + u64::from(source.displayed_size().1);
            let first = filtered + 1024;
            heap.alloc(alpha_bytes * 2 + filtered + first + 2 * filtered + 41);
            heap.free(first);
            let file = filtered + filtered / 8192 * 12 + filtered / 65535 * 5 + 1024;
            heap.alloc(grown(samples / 2 + 1024, file));
        }
    }
}

/// The capacity of a vector that starts at `start` and doubles until it holds `len`.
pub(crate) fn grown(start: u64, len: u64) -> u64 {
    let mut capacity = start.max(8);
    while capacity < len {
        capacity *= 2;
    }
    capacity
}
