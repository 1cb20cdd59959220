//! BMP sources, and the DIBs inside ICO files: our own reader of what Pillow's `BmpImagePlugin`
//! reads (every header from OS/2 v1's 12 bytes to V5's 124; 1, 4, 8, 16, 24 and 32 bits; none,
//! RLE8, RLE4 and bit fields; bottom-up and top-down), written from its rules so the same file
//! gives the same pixels, and strict where Pillow is: pixel data shorter than the header
//! promises, or an RLE stream that ends before the image is full, is an error.
//!
//! Why not a crate: zune-bmp 0.5 reads a missing palette entry as black, a 32-bit `BI_RGB` pixel's
//! fourth byte as alpha (Pillow ignores it) and an 8-bit file without a palette as gray, and
//! ends an RLE stream without its end code with a warning; BMP is simple enough that matching
//! Pillow here costs fewer lines than working around those.

use super::{Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::pixels::{GrayImage, GrayPalette, Layout, PlaneWriter};
use crate::{Cancel, Format, Limits};

const RAW: u32 = 0;
const RLE8: u32 = 1;
const RLE4: u32 = 2;
const BITFIELDS: u32 = 3;

/// How the pixel data is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pixels {
    /// 1, 4 or 8-bit palette indices, uncompressed.
    Indexed,
    /// RLE8 or RLE4 palette indices (`true` for RLE4).
    Rle { four: bool },
    /// 16, 24 or 32-bit pixels read through four masks (red, green, blue, alpha; 0 = absent).
    Masked([u32; 4]),
}

/// A BMP's (or an icon's DIB's) header, read and checked.
#[derive(Debug, Clone)]
pub(crate) struct BmpHeader {
    width: u32,
    height: u32,
    top_down: bool,
    bits: u16,
    pixels: Pixels,
    /// Where the palette starts, its entry count and entry size (3 bytes for OS/2 v1, else 4).
    palette: (usize, usize, usize),
    /// Where the pixel data starts, and the bytes it may take (to the end of the BMP or icon
    /// entry).
    data: (usize, usize),
    /// An icon's AND mask: where its rows start (bottom-up, one bit per pixel, rows padded to
    /// 32 bits). `None` for a BMP file and a 32-bit icon, whose alpha is in its pixels.
    and_mask: Option<usize>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Bmp, reason)
}

fn u16_at(data: &[u8], at: usize) -> Result<u16> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| invalid(format!("the header ends at byte {}", data.len())))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| invalid(format!("the header ends at byte {}", data.len())))
}

/// A BMP file: the 14-byte file header, then the DIB.
pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<BmpHeader> {
    // Pillow takes the pixel data offset from the file header, unless it points right after the
    // DIB header while a palette is there (then the palette is skipped).
    let offset = u32_at(data, 10)? as usize;
    read_dib(data, 14, Some(offset), false, limits)
}

/// An icon entry's DIB: no file header, the pixel data right after header, masks and palette,
/// the stored height twice the image's (the AND mask's rows follow the colour rows).
pub(crate) fn read_icon_dib(entry: &[u8], limits: &Limits) -> Result<BmpHeader> {
    read_dib(entry, 0, None, true, limits)
}

fn read_dib(
    data: &[u8],
    at: usize,
    file_offset: Option<usize>,
    icon: bool,
    limits: &Limits,
) -> Result<BmpHeader> {
    let size = u32_at(data, at)? as usize;
    let (width, height, bits, compression, colors, palette_entry);
    let mut after_header = at + size;
    match size {
        12 => {
            width = i32::from(u16_at(data, at + 4)?);
            height = i32::from(u16_at(data, at + 6)?);
            bits = u16_at(data, at + 10)?;
            compression = RAW;
            colors = 0;
            palette_entry = 3;
        }
        40 | 52 | 56 | 64 | 108 | 124 => {
            width = u32_at(data, at + 4)? as i32;
            height = u32_at(data, at + 8)? as i32;
            bits = u16_at(data, at + 14)?;
            compression = u32_at(data, at + 16)?;
            colors = u32_at(data, at + 32)? as usize;
            palette_entry = 4;
        }
        other => {
            return Err(Error::unsupported(format!(
                "BMP header of {other} bytes (expected 12, 40, 52, 56, 64, 108 or 124)"
            )));
        }
    }
    let pixels = match (compression, bits) {
        (RAW, 1 | 4 | 8) => Pixels::Indexed,
        (RAW, 16) => Pixels::Masked([0x7C00, 0x3E0, 0x1F, 0]),
        (RAW, 24) => Pixels::Masked([0xFF_0000, 0xFF00, 0xFF, 0]),
        // Pillow ignores the fourth byte of a 32-bit BI_RGB pixel, except in an icon.
        (RAW, 32) => Pixels::Masked([0xFF_0000, 0xFF00, 0xFF, if icon { 0xFF00_0000 } else { 0 }]),
        (RLE8, 8) => Pixels::Rle { four: false },
        (RLE4, 4) => Pixels::Rle { four: true },
        (BITFIELDS, 16 | 24 | 32) => {
            // A 40-byte header has the three colour masks after it; from 52 bytes they are in
            // it, and from 56 the alpha mask too.
            let mut masks = [0u32; 4];
            let (from, count) = if size >= 52 {
                (at + 40, if size >= 56 { 4 } else { 3 })
            } else {
                after_header += 12;
                (at + 40, 3)
            };
            for (i, mask) in masks.iter_mut().take(count).enumerate() {
                *mask = u32_at(data, from + 4 * i)?;
            }
            if masks == [0; 4] && bits == 32 {
                // Pillow reads all-zero masks as BGRA.
                masks = [0xFF_0000, 0xFF00, 0xFF, 0xFF00_0000];
            }
            if bits < 32 {
                // Pillow honours an alpha mask only at 32 bits (a 16-bit A1R5G5B5 shows opaque).
                masks[3] = 0;
            }
            Pixels::Masked(masks)
        }
        (RAW | BITFIELDS, _) => {
            return Err(Error::unsupported(format!(
                "BMP pixel depth of {bits} bits"
            )));
        }
        (RLE8 | RLE4, _) => {
            return Err(invalid(format!(
                "compression {compression} (RLE) with {bits} bits per pixel"
            )));
        }
        _ => {
            return Err(Error::unsupported(format!(
                "BMP compression {compression} (only none, RLE8, RLE4 and bit fields are read)"
            )));
        }
    };
    if width <= 0 || height == 0 || height == i32::MIN {
        return Err(invalid(format!(
            "the header declares {width}x{height} pixels"
        )));
    }
    let top_down = height < 0;
    let mut height = height.unsigned_abs();
    if icon {
        height /= 2;
        if height == 0 {
            return Err(invalid("an icon's DIB declares a height under 2"));
        }
    }
    let width = width as u32;
    limits.check_dimensions(width, height)?;

    let palette = if bits <= 8 {
        let count = if colors == 0 { 1 << bits } else { colors };
        if count > 65536 {
            return Err(invalid(format!("a palette of {count} colours")));
        }
        let count = count.min((data.len().saturating_sub(after_header)) / palette_entry);
        (after_header, count, palette_entry)
    } else {
        (after_header, 0, palette_entry)
    };
    let after_palette = after_header + palette.1 * palette.2;
    let offset = match file_offset {
        Some(offset) if offset == 14 + size && bits <= 8 => after_palette,
        Some(offset) => offset,
        None => after_palette,
    };
    if offset > data.len() {
        return Err(invalid(format!(
            "the pixel data would start at byte {offset}, past the end ({})",
            data.len()
        )));
    }
    let mut header = BmpHeader {
        width,
        height,
        top_down,
        bits,
        pixels,
        palette,
        data: (offset, data.len() - offset),
        and_mask: None,
    };
    if let Pixels::Indexed | Pixels::Masked(_) = pixels {
        let needed = header.stride() * height as usize;
        if needed > header.data.1 {
            return Err(invalid(format!(
                "truncated: {width}x{height} at {bits} bits needs {needed} bytes of pixel data, \
                 found {}",
                header.data.1
            )));
        }
    }
    if icon && bits < 32 {
        // As Pillow: the mask is the last bytes of the entry.
        let mask_bytes = (width as usize).div_ceil(32) * 4 * height as usize;
        let start = data.len().checked_sub(mask_bytes).filter(|&s| s >= offset);
        header.and_mask = Some(start.ok_or_else(|| {
            invalid(format!(
                "truncated: the icon's mask needs {mask_bytes} bytes, the entry has {}",
                data.len() - offset
            ))
        })?);
    }
    Ok(header)
}

impl BmpHeader {
    /// Bytes per stored row, padded to 32 bits.
    fn stride(&self) -> usize {
        (self.width as usize * usize::from(self.bits)).div_ceil(32) * 4
    }

    fn gray_palette(&self, data: &[u8]) -> GrayPalette {
        let (start, count, entry) = self.palette;
        let entries = data[start..start + count * entry]
            .chunks_exact(entry)
            .map(|bgr| [bgr[2], bgr[1], bgr[0], 255]);
        // Pillow maps an index past the palette to black.
        GrayPalette::new(entries, [0, 0, 0, 255])
    }

    /// Stored row `row` of uncompressed pixel data (checked present by the header reader).
    fn stored_row<'a>(&self, data: &'a [u8], row: usize) -> &'a [u8] {
        let stride = self.stride();
        &data[self.data.0 + row * stride..self.data.0 + (row + 1) * stride]
    }

    /// The output row that stored row `row` lands on.
    fn target_row(&self, row: usize) -> usize {
        if self.top_down {
            row
        } else {
            self.height as usize - 1 - row
        }
    }

    fn has_alpha(&self) -> bool {
        matches!(self.pixels, Pixels::Masked(m) if m[3] != 0) || self.and_mask.is_some()
    }

    /// The indices of an RLE image, in stored row order, as Pillow's `BmpRleDecoder` writes
    /// them: runs clipped at the row's end, deltas and line ends filling with index 0.
    fn rle_indices(&self, data: &[u8], four: bool) -> Result<Vec<u8>> {
        let width = self.width as usize;
        let total = width * self.height as usize;
        let mut out = Vec::with_capacity(total);
        let mut src = &data[self.data.0..];
        let mut x = 0usize;
        let mut pos = self.data.0;
        while out.len() < total {
            let [count, byte, ..] = *src else { break };
            src = &src[2..];
            pos += 2;
            if count > 0 {
                let n = usize::from(count).min(width.saturating_sub(x));
                if four {
                    let pair = [byte >> 4, byte & 0x0F];
                    out.extend((0..n).map(|i| pair[i % 2]));
                } else {
                    out.extend(std::iter::repeat_n(byte, n));
                }
                x += n;
                continue;
            }
            match byte {
                0 => {
                    let padded = out.len().next_multiple_of(width);
                    out.resize(padded.min(total), 0);
                    x = 0;
                }
                1 => break,
                2 => {
                    let [right, up, ..] = *src else { break };
                    src = &src[2..];
                    pos += 2;
                    let skip = usize::from(right) + usize::from(up) * width;
                    let end = (out.len() + skip).min(total);
                    out.resize(end, 0);
                    x = out.len() % width;
                }
                literal => {
                    let n = usize::from(literal).min(total - out.len());
                    let bytes = if four { n.div_ceil(2) } else { n };
                    let Some(run) = src.get(..bytes) else { break };
                    if four {
                        out.extend(run.iter().flat_map(|b| [b >> 4, b & 0x0F]).take(n));
                    } else {
                        out.extend_from_slice(run);
                    }
                    src = &src[bytes..];
                    pos += bytes;
                    if out.len() == total {
                        break;
                    }
                    x += usize::from(literal);
                    if !pos.is_multiple_of(2) {
                        src = src.get(1..).unwrap_or_default();
                        pos += 1;
                    }
                }
            }
        }
        if out.len() < total {
            return Err(invalid(format!(
                "truncated: the RLE data ends after {} of {total} pixels",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Applies an icon's AND mask: a set bit is a transparent pixel.
    fn apply_and_mask(&self, data: &[u8], image: &mut GrayImage, flatten_alpha: bool) {
        let Some(start) = self.and_mask else { return };
        let (width, height) = (self.width as usize, self.height as usize);
        let stride = width.div_ceil(32) * 4;
        let mut alpha = (!flatten_alpha).then(|| vec![255u8; width * height]);
        for row in 0..height {
            // The mask is stored bottom-up.
            let y = height - 1 - row;
            let bits = &data[start + row * stride..start + (row + 1) * stride];
            for x in 0..width {
                if bits[x / 8] & (0x80 >> (x % 8)) != 0 {
                    match &mut alpha {
                        Some(alpha) => alpha[y * width + x] = 0,
                        None => image.luma[y * width + x] = 255,
                    }
                }
            }
        }
        if alpha.is_some() {
            image.alpha = alpha;
        }
    }
}

/// `value`'s field under `mask`, scaled to 8 bits as Pillow's unpackers do (`v * 255 / max`,
/// rounded down; exact for 8-bit fields).
fn field(value: u32, mask: u32) -> u8 {
    if mask == 0 {
        return 0;
    }
    let max = u64::from(mask >> mask.trailing_zeros());
    let v = u64::from((value & mask) >> mask.trailing_zeros());
    (v * 255 / max) as u8
}

impl Source for BmpHeader {
    fn geometry(&self) -> Geometry {
        Geometry::stored(self.width, self.height)
    }

    fn decode(
        &self,
        data: &[u8],
        _: &Limits,
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        let (width, height) = (self.width as usize, self.height as usize);
        let mut image = match self.pixels {
            Pixels::Rle { four } => {
                let mut indices = self.rle_indices(data, four)?;
                if !self.top_down {
                    let (mut lo, mut hi) = (0, height - 1);
                    while lo < hi {
                        let (a, b) = indices.split_at_mut(hi * width);
                        a[lo * width..(lo + 1) * width].swap_with_slice(&mut b[..width]);
                        lo += 1;
                        hi -= 1;
                    }
                }
                self.gray_palette(data)
                    .planes(&indices, width, height, true)
            }
            Pixels::Indexed => {
                let palette = self.gray_palette(data);
                let mut indices = vec![0u8; width * height];
                let bits = usize::from(self.bits);
                let per_byte = 8 / bits;
                let mask = ((1u16 << bits) - 1) as u8;
                for row in 0..height {
                    let src = self.stored_row(data, row);
                    let y = self.target_row(row);
                    for (x, index) in indices[y * width..(y + 1) * width].iter_mut().enumerate() {
                        let shift = 8 - bits * (x % per_byte + 1);
                        *index = (src[x / per_byte] >> shift) & mask;
                    }
                }
                cancel.check()?;
                palette.planes(&indices, width, height, true)
            }
            Pixels::Masked(masks) => {
                let alpha = masks[3] != 0;
                let layout = if alpha { Layout::Rgba } else { Layout::Rgb };
                let mut writer = PlaneWriter::new(width, height, layout, flatten_alpha);
                let channels = layout.channels();
                let bytes = usize::from(self.bits) / 8;
                let mut line = vec![0u8; width * channels];
                for row in 0..height {
                    let src = self.stored_row(data, row);
                    for (px, out) in src.chunks_exact(bytes).zip(line.chunks_exact_mut(channels)) {
                        let mut v = [0u8; 4];
                        v[..bytes].copy_from_slice(px);
                        let value = u32::from_le_bytes(v);
                        for (c, sample) in out.iter_mut().enumerate() {
                            *sample = field(value, masks[c]);
                        }
                    }
                    writer.row(self.target_row(row), &line);
                    if row % 64 == 0 {
                        cancel.check()?;
                    }
                }
                writer.finish()
            }
        };
        self.apply_and_mask(data, &mut image, flatten_alpha);
        Ok(image)
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let row = 4 * u64::from(self.width);
        match self.pixels {
            // The indices, then the luma plane mapped from them.
            Pixels::Rle { .. } | Pixels::Indexed => {
                heap.alloc(2 * pixels);
                heap.free(pixels);
            }
            // The planes and one row of samples.
            Pixels::Masked(masks) => {
                let planes = if masks[3] != 0 && !flatten_alpha {
                    2
                } else {
                    1
                };
                heap.alloc(planes * pixels + row);
                heap.free(row);
            }
        }
        if self.and_mask.is_some() && !flatten_alpha {
            // An icon's mask as an alpha plane.
            heap.alloc(pixels);
        }
        self.has_alpha() && !flatten_alpha
    }
}
