//! JPEG sources: the coefficient path for gray and YCbCr Huffman JPEGs, the pixel path for the
//! rest, and the one encoder both end in.

mod bits;
mod decoder;
mod encoder;
mod fdct;
mod huffman;
mod idct;
mod islow;
pub(crate) mod markers;
#[cfg(target_arch = "aarch64")]
mod neon;
mod rotate;
mod survive;
mod tables;
mod transcode;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::time::Instant;

use crate::error::{Error, Result};
use crate::pixels::GrayImage;
use crate::{Cancel, Format, Limits, Quality, Stage, StageTimes, luma};
use markers::{ColorKind, Frame};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

pub(crate) use markers::read_frame;
pub(crate) use transcode::{Coefficients, encode_capacity, encode_plane, turning_bytes};

/// The bytes of one decoded luma block, as the decoder and the transcoder keep them.
pub(crate) const BLOCK_BYTES: usize = size_of::<decoder::Block>();

/// The output buffer the coefficient path starts with (it grows by doubling past it).
pub(crate) fn transcode_capacity(input_len: usize) -> usize {
    input_len / 2 + 1024
}

/// Whether the coefficient path turns this frame upright in the DCT domain (keeping every block
/// until the end) rather than carrying its orientation tag.
pub(crate) fn turns_upright(frame: &Frame) -> bool {
    rotate::Upright::new(frame.orientation, frame.width, frame.height).is_some()
}

/// Whether the first component's coefficients are the image's luma at full resolution: gray or
/// YCbCr, with luma sampled at least as densely as any other component.
pub(crate) fn has_luma_coefficients(frame: &Frame) -> bool {
    let luma = &frame.components[0];
    matches!(frame.color, ColorKind::Gray | ColorKind::YCbCr)
        && luma.h == frame.h_max()
        && luma.v == frame.v_max()
}

/// The coefficient path: the luma coefficients, requantized to `quality`, written as a
/// one-channel JPEG turned upright in the DCT domain where the blocks allow, carrying the
/// source's orientation tag otherwise.
pub(crate) fn transcode(
    data: &[u8],
    frame: &Frame,
    limits: &Limits,
    cancel: &Cancel,
    quality: Quality,
    stages: &mut StageTimes,
) -> Result<transcode::Encoded> {
    let start = Instant::now();
    let quality = match quality {
        Quality::Level(q) => Some(q),
        Quality::Source => None,
    };
    let capacity = transcode_capacity(data.len());
    let mut sink = transcode::Transcoder::new(
        frame.width,
        frame.height,
        frame.orientation,
        quality,
        capacity,
    );
    decoder::decode_luma(data, frame, limits, cancel, &mut sink)?;
    let decode_time = start.elapsed();
    let encode_before = sink.encode_time;
    let finished = sink.finish(cancel);
    let encode_time = encode_before + (start.elapsed() - decode_time);
    stages.add(Stage::EntropyEncode, encode_time);
    stages.add(
        Stage::EntropyDecode,
        decode_time.saturating_sub(encode_before),
    );
    finished?.ok_or_else(|| Error::Internal("the decoder finished without a scan".into()))
}

/// The pixel path's decode: the luma plane, through our own decoder and inverse DCT where the
/// luma coefficients are at hand, through zune-jpeg (to RGB, then BT.601 luma) otherwise.
pub(crate) fn decode_pixels(
    data: &[u8],
    frame: &Frame,
    limits: &Limits,
    cancel: &Cancel,
    stages: &mut StageTimes,
) -> Result<GrayImage> {
    let (width, height) = (frame.width as usize, frame.height as usize);
    if has_luma_coefficients(frame) {
        let (blocks_w, blocks_h) = frame.component_blocks(0);
        let mut sink = transcode::PlaneBuilder::new(blocks_w, blocks_h);
        stages.time(Stage::Decode, || {
            decoder::decode_luma(data, frame, limits, cancel, &mut sink)
        })?;
        return Ok(GrayImage {
            width,
            height,
            luma: sink.finish(width, height),
            alpha: None,
        });
    }
    let max = limits.max_dimension as usize;
    let options = DecoderOptions::default()
        .set_max_width(max)
        .set_max_height(max)
        .jpeg_set_max_scans(limits.max_scans as usize)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(data), options);
    let rgb = stages
        .time(Stage::Decode, || decoder.decode())
        .map_err(|e| Error::invalid(Format::Jpeg, format!("{e:?}")))?;
    if rgb.len() != width * height * 3 {
        return Err(Error::invalid(
            Format::Jpeg,
            format!(
                "expected {} decoded samples, found {}",
                width * height * 3,
                rgb.len()
            ),
        ));
    }
    // zune-jpeg cannot be stopped inside its call: the flag is looked at on its way out.
    cancel.check()?;
    // Allocated only now: the luma plane need not be live through zune-jpeg's own peak.
    let mut image = GrayImage::new(width, height);
    stages.time(Stage::Luma, || luma::rgb(&rgb, &mut image.luma));
    Ok(image)
}

/// Counts the scans of `data` against [`Limits::max_scans`] by walking its markers, without
/// decoding (a search for the next marker per scan): with the header, so that `probe` refuses a
/// scan bomb on upload and zune-jpeg, which does not say which limit it hit, never sees one.
/// Lenient: it stops counting, without an error, wherever the walk meets something it cannot
/// follow, and leaves judging the file to the decoder (which counts scans again as it goes).
pub(crate) fn check_scan_count(data: &[u8], limits: &Limits) -> Result<()> {
    let Ok(mut segments) = markers::Segments::new(data) else {
        return Ok(());
    };
    let mut scans = 0;
    while let Ok(marker) = segments.next_marker() {
        match marker {
            markers::EOI => break,
            0xD0..=0xD7 | 0x01 => continue,
            _ => {}
        }
        if segments.payload().is_err() {
            break;
        }
        if marker == markers::SOS {
            scans += 1;
            limits.check_scans(scans)?;
            match bits::skip_scan(data, segments.pos) {
                Ok(end) => segments.pos = end,
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// Decodes the luma coefficients and counts the blocks, keeping nothing (for the benches).
pub(crate) fn count_luma_blocks(data: &[u8], frame: &Frame) -> Result<usize> {
    struct Count(usize);
    impl decoder::LumaSink for Count {
        fn begin(&mut self, _: &tables::QuantTable) -> Result<()> {
            Ok(())
        }
        fn row(&mut self, blocks: &[decoder::Block]) -> Result<()> {
            self.0 += blocks.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    decoder::decode_luma(data, frame, &Limits::default(), &Cancel::NEVER, &mut count)?;
    Ok(count.0)
}

/// Decodes the luma coefficients into memory (for the benches).
pub(crate) fn collect_luma(data: &[u8], frame: &Frame) -> Result<Coefficients> {
    let mut sink = Coefficients::new(frame.width, frame.height);
    decoder::decode_luma(data, frame, &Limits::default(), &Cancel::NEVER, &mut sink)?;
    Ok(sink)
}
