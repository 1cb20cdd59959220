//! PNG sources: zune-png decodes, then every colour type and depth becomes 8-bit luma.

use super::{Depth, Geometry, Source};
use crate::error::{Error, LimitKind, Result};
use crate::estimate::Heap;
use crate::pixels::{GrayImage, Layout};
use crate::{Cancel, Format, Limits, Orientation};
use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_core::result::DecodingResult;
use zune_inflate::errors::DecodeErrorStatus;
use zune_inflate::{DeflateDecoder, DeflateOptions};
use zune_png::PngDecoder;

/// What the PNG's chunks say, read without decoding pixels.
pub(crate) struct PngHeader {
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
    /// Bytes per decoded sample: 2 at 16 bits, 1 otherwise (lower depths are expanded).
    pub sample_bytes: usize,
    /// Channels as stored (a palette index is one) and as zune-png decodes them (a palette
    /// becomes RGB, tRNS adds alpha).
    pub stored_channels: usize,
    pub decoded_channels: usize,
    pub interlaced: bool,
    /// The compressed pixel data, all IDAT chunks together.
    pub idat_bytes: usize,
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

/// The chunks after the signature, as type and data, up to IEND or to where the bytes run out
/// (zune-png reports a truncated file; this walk only looks).
fn chunks(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos = 8usize;
    std::iter::from_fn(move || {
        let head = data.get(pos..pos.checked_add(8)?)?;
        let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let kind: [u8; 4] = head[4..8].try_into().expect("4 bytes");
        let body = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
        pos = if &kind == b"IEND" {
            data.len()
        } else {
            pos + 12 + len
        };
        Some((kind, body))
    })
}

/// The most one compressed ancillary chunk may inflate to.
const ANCILLARY_CHUNK_MAX: usize = 1 << 20;
/// The most all of a file's compressed ancillary chunks may inflate to together: what zune-png
/// then spends inflating them again stays small however many chunks a file holds.
const ANCILLARY_TOTAL_MAX: usize = 4 << 20;

/// Refuses a PNG whose iCCP or zTXt chunks inflate past [`ANCILLARY_CHUNK_MAX`] each or
/// [`ANCILLARY_TOTAL_MAX`] together, before zune-png sees the file.
///
/// zune-png's `decode_headers` inflates every iCCP and zTXt chunk with zune-inflate's default
/// limit of 1 GiB per chunk and never reads the decoder's inflate limit, so the pixel limit does
/// not help: a 1x1 image with 2 MB of deflated zeros in a zTXt cost 4 GB. (It keeps iTXt
/// compressed and does not inflate it.) The engine uses neither the profile nor the text, so
/// skipping the chunks would do, but zune-png reads one contiguous buffer: hiding them means
/// copying the whole file, on every PNG, for what no real image holds. Refusing costs one
/// bounded inflate per such chunk instead, and a real ICC profile (a few KB for sRGB, a few
/// hundred for a print profile) or text is far below the bound.
fn check_ancillary_chunks(data: &[u8]) -> Result<()> {
    let mut inflated = 0;
    for (kind, body) in chunks(data) {
        if !matches!(&kind, b"iCCP" | b"zTXt") {
            continue;
        }
        // What zune-png inflates: the rest after the keyword's NUL (within the first 79 bytes)
        // and the compression-method byte. Without a NUL it inflates nothing.
        let Some(nul) = body[..body.len().min(79)].iter().position(|&b| b == 0) else {
            continue;
        };
        let compressed = body.get(nul + 2..).unwrap_or_default();
        let limit = ANCILLARY_CHUNK_MAX.min(ANCILLARY_TOTAL_MAX - inflated);
        let options = DeflateOptions::default().set_limit(limit);
        match DeflateDecoder::new_with_options(compressed, options).decode_zlib() {
            Ok(text) => inflated += text.len(),
            Err(e) => {
                if let DecodeErrorStatus::OutputLimitExceeded(_, found) = e.error {
                    let (found, max) = if limit == ANCILLARY_CHUNK_MAX {
                        (found, ANCILLARY_CHUNK_MAX)
                    } else {
                        (inflated + found, ANCILLARY_TOTAL_MAX)
                    };
                    return Err(Error::OverLimit {
                        limit: LimitKind::AncillaryChunk,
                        found: found as u64,
                        max: max as u64,
                    });
                }
                // zune-png drops a chunk that does not inflate, with a warning; so does this.
            }
        }
    }
    Ok(())
}

/// Reads the header from the chunks and checks the limits, allocating nothing for pixels (and
/// at most the bounded inflate of [`check_ancillary_chunks`]).
pub(crate) fn read_layout(data: &[u8], limits: &Limits) -> Result<PngHeader> {
    // IHDR is the first chunk: signature (8), length (4), "IHDR" (4), then width, height (4
    // each), depth, colour type, compression, filter and interlace method (1 each).
    let ihdr = match data.get(8..29) {
        Some(h) if &h[4..8] == b"IHDR" => &h[8..],
        _ => {
            return Err(Error::invalid(
                Format::Png,
                "expected an IHDR chunk right after the signature",
            ));
        }
    };
    let width = u32::from_be_bytes(ihdr[..4].try_into().expect("4 bytes"));
    let height = u32::from_be_bytes(ihdr[4..8].try_into().expect("4 bytes"));
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            Format::Png,
            format!("the header declares {width}x{height} pixels"),
        ));
    }
    limits.check_dimensions(width, height)?;
    check_ancillary_chunks(data)?;
    let (depth, color, interlace) = (ihdr[8], ihdr[9], ihdr[12]);
    let (mut orientation, mut transparency, mut idat_bytes) = (Orientation::NORMAL, false, 0);
    for (kind, body) in chunks(data) {
        match &kind {
            b"tRNS" => transparency = true,
            b"IDAT" => idat_bytes += body.len(),
            // As zune-png: the last eXIf that starts as TIFF does.
            b"eXIf" if body.starts_with(b"II*\0") || body.starts_with(b"MM\0*") => {
                orientation = Orientation::from_exif(body);
            }
            _ => {}
        }
    }
    let stored_channels = match color {
        2 => 3,
        4 => 2,
        6 => 4,
        _ => 1, // gray and palette; an unknown colour type is zune-png's to refuse
    };
    let decoded_channels = match (color, transparency) {
        (0, false) => 1,
        (0, true) | (4, _) => 2,
        (2 | 3, false) => 3,
        _ => 4,
    };
    Ok(PngHeader {
        width,
        height,
        orientation,
        sample_bytes: if depth == 16 { 2 } else { 1 },
        stored_channels,
        decoded_channels,
        interlaced: interlace != 0,
        idat_bytes,
    })
}

/// [`read_layout`], and at [`Depth::Full`] zune-png's reading of every chunk before the pixels,
/// so that a file it would refuse is refused here.
pub(crate) fn read_header(data: &[u8], limits: &Limits, depth: Depth) -> Result<PngHeader> {
    let header = read_layout(data, limits)?;
    if depth == Depth::Full {
        let mut decoder = PngDecoder::new_with_options(ZCursor::new(data), options(limits));
        decoder.decode_headers().map_err(invalid)?;
    }
    Ok(header)
}

impl Source for PngHeader {
    fn geometry(&self) -> Geometry {
        Geometry {
            width: self.width,
            height: self.height,
            orientation: self.orientation,
        }
    }

    fn decode(
        &self,
        data: &[u8],
        limits: &Limits,
        _: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        decode(data, limits, flatten_alpha)
    }

    /// The decode through zune-png, then luma (and alpha where kept).
    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let (width, height) = (u64::from(self.width), u64::from(self.height));
        let pixels = width * height;
        let bytes = self.sample_bytes as u64;
        let decoded = pixels * self.decoded_channels as u64 * bytes;
        // zune-png's own sizing of the inflated data (one more pixel per row as the filter byte).
        let inflated = (width + 1) * height * bytes * self.stored_channels as u64;
        // The IDAT chunks are gathered in a doubling vector; the output exists before inflating.
        let idat = 2 * self.idat_bytes as u64;
        heap.alloc(idat + decoded + inflated);
        if self.interlaced {
            // Adam7: the passes are decoded apart and then spread into the output.
            heap.alloc(decoded);
            heap.free(decoded);
        }
        heap.free(idat + inflated);
        let channels = self.decoded_channels as u64;
        let mut samples = decoded;
        if bytes == 2 {
            heap.alloc(pixels * channels);
            heap.free(decoded);
            samples = pixels * channels;
        }
        let alpha = !flatten_alpha && matches!(channels, 2 | 4);
        let planes = if alpha { 2 } else { 1 };
        if channels == 1 {
            // The samples are the luma.
            return false;
        }
        heap.alloc(planes * pixels);
        heap.free(samples);
        alpha
    }
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
    let layout = match colorspace {
        ColorSpace::Luma => Layout::Gray,
        ColorSpace::LumaA => Layout::GrayAlpha,
        ColorSpace::RGB => Layout::Rgb,
        ColorSpace::RGBA => Layout::Rgba,
        other => return Err(Error::unsupported(format!("PNG colour space {other:?}"))),
    };
    GrayImage::from_samples(Format::Png, samples, layout, width, height, flatten_alpha)
}
