//! TIFF sources: the first page, as Pillow shows it. Our own reading of the first IFD (classic
//! and BigTIFF, either byte order), then per strip or tile: decompression (none, PackBits, LZW
//! through `weezl`, Deflate through `zune-inflate`, JPEG through `zune-jpeg`, CCITT group 3 and 4
//! through `fax`), the horizontal predictor, and the photometric interpretation to luma (and
//! alpha) row by row, so the image's samples never exist whole.
//!
//! Why not the `tiff` crate: its `colortype()` refuses palette images and subsampled YCbCr outside
//! JPEG compression, its 16-bit gray is not what Pillow shows (Pillow clips `I;16` to 255 when it
//! converts to `L`), and checking every strip's offset and size against the file before anything
//! is allocated is the reader's own walk either way; with that walk written, the decompressors
//! are the part worth taking from crates, and all but `fax` were already built for PNG and GIF.
//!
//! Pillow's rules, followed: 16-bit gray is clipped to 255, 16-bit colour keeps its high byte;
//! CMYK becomes RGB as Pillow's `cmyk2rgb` does; associated alpha is unpremultiplied as its
//! `RGBa` to `RGBA` conversion does; uncompressed YCbCr without subsampling is converted with
//! BT.601 coefficients whatever its tags say (Pillow's own unpacker), other YCbCr through its
//! `YCbCrCoefficients` with chroma repeated over each block (libtiff's RGBA interface, which
//! Pillow uses there); the Orientation tag (274) is applied.

use std::borrow::Cow;

use super::{Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::pixels::{GrayImage, Layout, PlaneWriter};
use crate::{Cancel, Format, Limits, Orientation};

const NONE: u16 = 1;
const CCITT_G3: u16 = 3;
const CCITT_G4: u16 = 4;
const LZW: u16 = 5;
const OLD_JPEG: u16 = 6;
const JPEG: u16 = 7;
const DEFLATE: u16 = 8;
const DEFLATE_OLD: u16 = 32946;
const PACKBITS: u16 = 32773;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Photometric {
    WhiteIsZero,
    BlackIsZero,
    Rgb,
    Palette,
    Cmyk,
    YCbCr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpha {
    None,
    Straight,
    Premultiplied,
}

/// An array in the file: where it starts, its TIFF type and its length, read on demand so the
/// header reader allocates nothing.
#[derive(Debug, Clone, Copy)]
struct Array {
    at: usize,
    kind: u16,
    count: usize,
}

/// The first IFD, read and checked.
#[derive(Debug, Clone)]
pub(crate) struct TiffHeader {
    big_endian: bool,
    width: u32,
    height: u32,
    orientation: Orientation,
    photometric: Photometric,
    bits: u16,
    /// Samples per pixel, extra samples included.
    samples: usize,
    alpha: Alpha,
    planar: bool,
    compression: u16,
    predictor: u16,
    fill_reversed: bool,
    /// Chroma subsampling of YCbCr data outside JPEG (1, 1 otherwise).
    subsampling: (usize, usize),
    /// Luma coefficients (red, blue) for YCbCr.
    ycbcr: (f32, f32),
    /// A strip is a chunk as wide as the image.
    chunk_w: usize,
    chunk_h: usize,
    offsets: Array,
    byte_counts: Array,
    colormap: Option<Array>,
    jpeg_tables: Option<Array>,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Tiff, reason)
}

fn truncated(len: usize) -> Error {
    invalid(format!("truncated: the file ends at byte {len}"))
}

fn type_size(kind: u16) -> Option<usize> {
    Some(match kind {
        1 | 2 | 6 | 7 => 1,
        3 | 8 => 2,
        4 | 9 | 11 | 13 => 4,
        5 | 10 | 12 | 16 | 17 | 18 => 8,
        _ => return None,
    })
}

/// The file's byte order and offset size.
#[derive(Debug, Clone, Copy)]
struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N]> {
        let b = self
            .data
            .get(
                at..at
                    .checked_add(N)
                    .ok_or_else(|| truncated(self.data.len()))?,
            )
            .ok_or_else(|| truncated(self.data.len()))?;
        let mut out = [0; N];
        out.copy_from_slice(b);
        if !self.big_endian {
            out.reverse();
        }
        Ok(out)
    }

    fn u16(&self, at: usize) -> Result<u16> {
        self.bytes::<2>(at).map(u16::from_be_bytes)
    }

    fn u32(&self, at: usize) -> Result<u32> {
        self.bytes::<4>(at).map(u32::from_be_bytes)
    }

    fn u64(&self, at: usize) -> Result<u64> {
        self.bytes::<8>(at).map(u64::from_be_bytes)
    }

    /// Element `i` of `array` as an unsigned integer (rationals: their numerator).
    fn get(&self, array: Array, i: usize) -> Result<u64> {
        let size = type_size(array.kind).unwrap_or(1);
        let at = array.at + i * size;
        Ok(match array.kind {
            1 | 2 | 6 | 7 => u64::from(*self.data.get(at).ok_or_else(|| truncated(at))?),
            3 | 8 => u64::from(self.u16(at)?),
            4 | 9 | 13 | 5 | 10 => u64::from(self.u32(at)?),
            _ => self.u64(at)?,
        })
    }

    /// A rational as a float.
    fn rational(&self, array: Array, i: usize) -> Result<f32> {
        let at = array.at + i * 8;
        let (num, den) = (self.u32(at)?, self.u32(at + 4)?);
        Ok(if den == 0 {
            0.0
        } else {
            num as f32 / den as f32
        })
    }
}

/// Reads the first IFD and checks every limit and every strip or tile against the file,
/// allocating nothing.
pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<TiffHeader> {
    let big_endian = match data.get(..2) {
        Some(b"II") => false,
        Some(b"MM") => true,
        _ => return Err(invalid("no byte order mark")),
    };
    let r = Reader { data, big_endian };
    let (bigtiff, ifd) = match r.u16(2)? {
        42 => (false, u64::from(r.u32(4)?)),
        43 => {
            if r.u16(4)? != 8 {
                return Err(invalid("a BigTIFF offset size other than 8"));
            }
            (true, r.u64(8)?)
        }
        other => return Err(invalid(format!("version {other} (expected 42 or 43)"))),
    };
    let ifd = usize::try_from(ifd).map_err(|_| truncated(data.len()))?;
    let (count, first, entry_size, inline) = if bigtiff {
        (r.u64(ifd)?, ifd + 8, 20, 8)
    } else {
        (u64::from(r.u16(ifd)?), ifd + 2, 12, 4)
    };
    let count = usize::try_from(count).map_err(|_| truncated(data.len()))?;
    if first.saturating_add(count.saturating_mul(entry_size)) > data.len() {
        return Err(invalid("truncated in the first IFD"));
    }
    let mut tags: [Option<Array>; 24] = [None; 24];
    for i in 0..count {
        let at = first + i * entry_size;
        let tag = r.u16(at)?;
        let Some(slot) = WANTED.iter().position(|&t| t == tag) else {
            continue;
        };
        let kind = r.u16(at + 2)?;
        let Some(size) = type_size(kind) else {
            return Err(invalid(format!("tag {tag} has unknown type {kind}")));
        };
        let n = if bigtiff {
            r.u64(at + 4)?
        } else {
            u64::from(r.u32(at + 4)?)
        };
        let n = usize::try_from(n).map_err(|_| truncated(data.len()))?;
        let value = at + if bigtiff { 12 } else { 8 };
        let bytes = n.checked_mul(size).ok_or_else(|| truncated(data.len()))?;
        let start = if bytes <= inline {
            value
        } else if bigtiff {
            usize::try_from(r.u64(value)?).map_err(|_| truncated(data.len()))?
        } else {
            r.u32(value)? as usize
        };
        if start.checked_add(bytes).is_none_or(|end| end > data.len()) {
            return Err(invalid(format!("tag {tag}'s values lie past the end")));
        }
        tags[slot] = Some(Array {
            at: start,
            kind,
            count: n,
        });
    }
    let tag = |t: u16| tags[WANTED.iter().position(|&w| w == t).expect("a wanted tag")];
    let scalar = |t: u16, default: u64| -> Result<u64> {
        match tag(t) {
            Some(a) if a.count > 0 => r.get(a, 0),
            _ => Ok(default),
        }
    };
    let need = |t: u16, what: &str| tag(t).ok_or_else(|| invalid(format!("no {what} tag")));

    let width = u32::try_from(scalar(256, 0)?).unwrap_or(u32::MAX);
    let height = u32::try_from(scalar(257, 0)?).unwrap_or(u32::MAX);
    if width == 0 || height == 0 {
        return Err(invalid(format!("the image is {width}x{height} pixels")));
    }
    limits.check_dimensions(width, height)?;

    let samples = scalar(277, 1)? as usize;
    let bits = scalar(258, 1)?;
    if let Some(a) = tag(258) {
        for i in 1..a.count.min(samples) {
            if r.get(a, i)? != bits {
                return Err(Error::unsupported("TIFF samples of different bit depths"));
            }
        }
    }
    let format = scalar(339, 1)?;
    if format != 1 {
        return Err(Error::unsupported(format!(
            "TIFF sample format {format} (only unsigned integers are read)"
        )));
    }
    let compression = u16::try_from(scalar(259, 1)?).unwrap_or(0);
    let photometric = match scalar(262, u64::MAX)? {
        0 => Photometric::WhiteIsZero,
        1 => Photometric::BlackIsZero,
        2 => Photometric::Rgb,
        3 => Photometric::Palette,
        5 => Photometric::Cmyk,
        6 => Photometric::YCbCr,
        u64::MAX => return Err(invalid("no PhotometricInterpretation tag")),
        other => {
            return Err(Error::unsupported(format!(
                "TIFF photometric interpretation {other}"
            )));
        }
    };
    let base = match photometric {
        Photometric::WhiteIsZero | Photometric::BlackIsZero | Photometric::Palette => 1,
        Photometric::Rgb | Photometric::YCbCr => 3,
        Photometric::Cmyk => 4,
    };
    if samples < base || samples > base + 4 {
        return Err(invalid(format!(
            "{samples} samples per pixel for photometric {photometric:?}"
        )));
    }
    // The first extra sample, as Pillow reads it: 1 is premultiplied alpha, 2 straight alpha,
    // 0 (unspecified) is ignored.
    let alpha = match (samples > base, tag(338)) {
        (true, Some(a)) if a.count > 0 => match r.get(a, 0)? {
            1 => Alpha::Premultiplied,
            2 => Alpha::Straight,
            _ => Alpha::None,
        },
        _ => Alpha::None,
    };
    let bits = u16::try_from(bits).unwrap_or(0);
    let supported = match (photometric, bits) {
        (Photometric::WhiteIsZero | Photometric::BlackIsZero, 1 | 2 | 4) => samples == 1,
        (Photometric::Palette, 1 | 2 | 4 | 8) => samples == 1,
        (Photometric::YCbCr, 8) => samples == 3,
        (Photometric::Cmyk, 8 | 16) => alpha == Alpha::None,
        // Pillow's `I;16` has no alpha, and no WhiteIsZero form.
        (Photometric::BlackIsZero, 16) => samples == 1,
        (Photometric::WhiteIsZero, 16) => false,
        (_, 8 | 16) => true,
        _ => false,
    };
    if !supported {
        return Err(Error::unsupported(format!(
            "TIFF {photometric:?} with {samples} samples of {bits} bits"
        )));
    }
    let planar = scalar(284, 1)? == 2 && samples > 1;
    let predictor = u16::try_from(scalar(317, 1)?).unwrap_or(0);
    match compression {
        NONE | LZW | DEFLATE | DEFLATE_OLD | PACKBITS => {}
        CCITT_G3 | CCITT_G4 if bits == 1 && samples == 1 => {}
        JPEG if bits == 8
            && !planar
            && samples == base
            && matches!(
                photometric,
                Photometric::YCbCr | Photometric::Rgb | Photometric::BlackIsZero
            ) => {}
        OLD_JPEG => return Err(Error::unsupported("TIFF old-style JPEG (compression 6)")),
        other => {
            return Err(Error::unsupported(format!(
                "TIFF compression {other} with {photometric:?} {bits}-bit samples"
            )));
        }
    }
    let t4_options = scalar(292, 0)? as u32;
    if compression == CCITT_G3 && t4_options & 1 != 0 {
        return Err(Error::unsupported("TIFF CCITT group 3 with 2D coding"));
    }
    if matches!(compression, CCITT_G3 | CCITT_G4) && width > u32::from(u16::MAX) {
        return Err(Error::unsupported("a CCITT fax image wider than 65535"));
    }
    let predicting = !matches!(compression, JPEG | CCITT_G3 | CCITT_G4);
    match predictor {
        1 => {}
        2 if !predicting || bits == 8 || bits == 16 => {}
        other => {
            return Err(Error::unsupported(format!(
                "TIFF predictor {other} with {bits}-bit samples"
            )));
        }
    }
    let subsampling = match (photometric, compression, tag(530)) {
        (Photometric::YCbCr, c, Some(a)) if c != JPEG && a.count >= 2 => {
            let (h, v) = (r.get(a, 0)? as usize, r.get(a, 1)? as usize);
            if ![1, 2, 4].contains(&h) || ![1, 2, 4].contains(&v) || v > h {
                return Err(invalid(format!("YCbCr subsampling {h}x{v}")));
            }
            if planar && (h, v) != (1, 1) {
                return Err(Error::unsupported("planar subsampled YCbCr"));
            }
            (h, v)
        }
        (Photometric::YCbCr, c, None) if c != JPEG => (2, 2),
        _ => (1, 1),
    };
    let ycbcr = match tag(529) {
        // Pillow's own unpacker (uncompressed, not subsampled) ignores the tag.
        Some(a) if a.kind == 5 && a.count >= 3 && (compression, subsampling) != (NONE, (1, 1)) => {
            (r.rational(a, 0)?, r.rational(a, 2)?)
        }
        _ => (0.299, 0.114),
    };

    let (chunk_w, chunk_h, offsets, byte_counts) = match (tag(322), tag(323)) {
        (Some(_), Some(_)) => {
            let (w, h) = (scalar(322, 0)?, scalar(323, 0)?);
            if w == 0 || h == 0 || w > u64::from(u32::MAX) || h > u64::from(u32::MAX) {
                return Err(invalid(format!("tiles of {w}x{h}")));
            }
            // A tile is decompressed whole: it is held to the limits as an image is (the
            // estimate counts it).
            limits.check_dimensions(w as u32, h as u32)?;
            (
                w as usize,
                h as usize,
                need(324, "TileOffsets")?,
                need(325, "TileByteCounts")?,
            )
        }
        _ => {
            let rows = scalar(278, u64::from(u32::MAX))?.clamp(1, u64::from(height));
            (
                width as usize,
                rows as usize,
                need(273, "StripOffsets")?,
                need(279, "StripByteCounts")?,
            )
        }
    };
    if matches!(compression, CCITT_G3 | CCITT_G4) && chunk_h > usize::from(u16::MAX) {
        return Err(Error::unsupported(
            "a CCITT fax strip taller than 65535 rows",
        ));
    }
    let colormap = match photometric {
        Photometric::Palette => {
            let a = need(320, "ColorMap")?;
            if a.count < 3 << bits || type_size(a.kind) != Some(2) {
                return Err(invalid(format!(
                    "a colour map of {} entries for {bits}-bit indices",
                    a.count
                )));
            }
            Some(a)
        }
        _ => None,
    };
    let header = TiffHeader {
        big_endian,
        width,
        height,
        orientation: Orientation::new(u8::try_from(scalar(274, 1)?).unwrap_or(1)),
        photometric,
        bits,
        samples,
        alpha,
        planar,
        compression,
        predictor: if predicting { predictor } else { 1 },
        fill_reversed: scalar(266, 1)? == 2,
        subsampling,
        ycbcr,
        chunk_w,
        chunk_h,
        offsets,
        byte_counts,
        colormap,
        jpeg_tables: tag(347).filter(|_| compression == JPEG),
    };
    header.check_chunks(&r)?;
    Ok(header)
}

/// The tags the reader looks at (its table of slots).
const WANTED: [u16; 24] = [
    256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 284, 292, 317, 320, 322, 323, 324, 325,
    338, 339, 347, 529, 530,
];

impl TiffHeader {
    fn reader<'a>(&self, data: &'a [u8]) -> Reader<'a> {
        Reader {
            data,
            big_endian: self.big_endian,
        }
    }

    fn across(&self) -> usize {
        (self.width as usize).div_ceil(self.chunk_w)
    }

    fn down(&self) -> usize {
        (self.height as usize).div_ceil(self.chunk_h)
    }

    fn planes(&self) -> usize {
        if self.planar { self.samples } else { 1 }
    }

    /// Rows of image data in chunk row `down` (a last strip holds the rest; a tile is whole).
    fn rows(&self, down: usize) -> usize {
        if self.across() == 1 && self.chunk_w == self.width as usize {
            self.chunk_h.min(self.height as usize - down * self.chunk_h)
        } else {
            self.chunk_h
        }
    }

    /// Bytes of one decompressed row of a chunk, in one plane.
    fn row_bytes(&self) -> usize {
        let per_pixel = if self.planar { 1 } else { self.samples };
        (self.chunk_w * per_pixel * usize::from(self.bits)).div_ceil(8)
    }

    /// Bytes of a decompressed chunk of `rows` rows, in one plane.
    fn chunk_bytes(&self, rows: usize) -> usize {
        let (h, v) = self.subsampling;
        if (h, v) == (1, 1) {
            self.row_bytes() * rows
        } else {
            self.chunk_w.div_ceil(h) * rows.div_ceil(v) * (h * v + 2)
        }
    }

    /// Where chunk `i`'s compressed bytes are.
    fn chunk_range(&self, r: &Reader, i: usize) -> Result<(usize, usize)> {
        let offset = r.get(self.offsets, i)?;
        let count = r.get(self.byte_counts, i)?;
        let end = offset.saturating_add(count);
        if end > r.data.len() as u64 {
            return Err(invalid(format!(
                "truncated: strip or tile {i} ends at byte {end}, the file at {}",
                r.data.len()
            )));
        }
        if count == 0 {
            return Err(invalid(format!("strip or tile {i} is empty")));
        }
        Ok((offset as usize, end as usize))
    }

    /// Every strip or tile lies inside the file, and an uncompressed one holds its rows.
    fn check_chunks(&self, r: &Reader) -> Result<()> {
        let per_plane = self.across() * self.down();
        let total = per_plane * self.planes();
        if self.offsets.count < total || self.byte_counts.count < total {
            return Err(invalid(format!(
                "{total} strips or tiles needed, {} offsets and {} byte counts given",
                self.offsets.count, self.byte_counts.count
            )));
        }
        for i in 0..total {
            let (start, end) = self.chunk_range(r, i)?;
            let needed = self.chunk_bytes(self.rows(i % per_plane / self.across()));
            if self.compression == NONE && end - start < needed {
                return Err(invalid(format!(
                    "truncated: strip or tile {i} holds {} bytes of {needed}",
                    end - start
                )));
            }
        }
        Ok(())
    }

    fn layout(&self) -> Layout {
        let alpha = self.alpha != Alpha::None;
        match (self.photometric, alpha) {
            (Photometric::WhiteIsZero | Photometric::BlackIsZero, false) => Layout::Gray,
            (Photometric::WhiteIsZero | Photometric::BlackIsZero, true) => Layout::GrayAlpha,
            (_, false) => Layout::Rgb,
            (_, true) => Layout::Rgba,
        }
    }

    /// Chunk `i` decompressed to `expected` bytes, the predictor undone.
    fn decompress<'a>(&self, data: &'a [u8], i: usize, rows: usize) -> Result<Cow<'a, [u8]>> {
        let r = self.reader(data);
        let (start, end) = self.chunk_range(&r, i)?;
        let expected = self.chunk_bytes(rows);
        let mut input = Cow::Borrowed(&data[start..end]);
        if self.fill_reversed {
            input = Cow::Owned(input.iter().map(|b| b.reverse_bits()).collect());
        }
        let short = |got: usize| {
            invalid(format!(
                "truncated: strip or tile {i} decompresses to {got} bytes of {expected}"
            ))
        };
        let mut out = match self.compression {
            NONE => match input {
                Cow::Borrowed(b) => Cow::Borrowed(&b[..expected]),
                Cow::Owned(mut v) => {
                    v.truncate(expected);
                    Cow::Owned(v)
                }
            },
            PACKBITS => {
                let mut out = vec![0; expected];
                let got = unpack_bits(&input, &mut out);
                if got < expected {
                    return Err(short(got));
                }
                Cow::Owned(out)
            }
            LZW => {
                let mut out = vec![0; expected];
                let mut decoder =
                    weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8);
                let (mut read, mut written) = (0, 0);
                while written < expected {
                    let result = decoder.decode_bytes(&input[read..], &mut out[written..]);
                    read += result.consumed_in;
                    written += result.consumed_out;
                    match result.status {
                        Ok(weezl::LzwStatus::Ok)
                            if result.consumed_in + result.consumed_out > 0 => {}
                        Ok(_) => break,
                        Err(e) => return Err(invalid(format!("strip or tile {i}: LZW: {e}"))),
                    }
                }
                if written < expected {
                    return Err(short(written));
                }
                Cow::Owned(out)
            }
            DEFLATE | DEFLATE_OLD => {
                // The limit is the chunk's own size: a deflate bomb stops there.
                let options = zune_inflate::DeflateOptions::default()
                    .set_limit(expected)
                    .set_size_hint(expected);
                let mut out = zune_inflate::DeflateDecoder::new_with_options(&input, options)
                    .decode_zlib()
                    .map_err(|e| invalid(format!("strip or tile {i}: Deflate: {:?}", e.error)))?;
                if out.len() < expected {
                    return Err(short(out.len()));
                }
                out.truncate(expected);
                Cow::Owned(out)
            }
            CCITT_G3 | CCITT_G4 => Cow::Owned(self.fax(&input, i, rows)?),
            other => return Err(Error::Internal(format!("TIFF compression {other} unread"))),
        };
        if self.predictor == 2 {
            self.undo_predictor(out.to_mut(), rows);
        }
        Ok(out)
    }

    /// A CCITT strip, decoded to packed bits (1 for black runs, as libtiff's decoder fills them;
    /// the photometric interpretation says what 1 shows as).
    fn fax(&self, input: &[u8], i: usize, rows: usize) -> Result<Vec<u8>> {
        let width = self.chunk_w as u16;
        let stride = self.row_bytes();
        let mut out = vec![0u8; stride * rows];
        let mut row = 0;
        let mut line = |transitions: &[u16]| {
            if row < rows {
                let dst = &mut out[row * stride..(row + 1) * stride];
                for (x, colour) in fax::decoder::pels(transitions, width).enumerate() {
                    if colour == fax::Color::Black {
                        dst[x / 8] |= 0x80 >> (x % 8);
                    }
                }
                row += 1;
            }
        };
        let status = if self.compression == CCITT_G4 {
            fax::decoder::decode_g4(input.iter().copied(), width, Some(rows as u16), &mut line)
        } else {
            // `fax` hands over a group 3 line when the next EOL arrives, and a strip may end
            // without one (libtiff writes none after the last line): two EOLs close it.
            let eols = [0x00, 0x10, 0x01];
            fax::decoder::decode_g3(input.iter().chain(&eols).copied(), &mut line)
        };
        if row < rows {
            let why = if status.is_none() { "corrupt or " } else { "" };
            return Err(invalid(format!(
                "strip {i}: {why}truncated CCITT data ({row} of {rows} rows)"
            )));
        }
        Ok(out)
    }

    fn undo_predictor(&self, buf: &mut [u8], rows: usize) {
        let stride = self.row_bytes();
        let per_pixel = if self.planar { 1 } else { self.samples };
        for row in buf.chunks_exact_mut(stride).take(rows) {
            if self.bits == 8 {
                for x in per_pixel..row.len() {
                    row[x] = row[x].wrapping_add(row[x - per_pixel]);
                }
            } else {
                let read = |b: &[u8], at: usize| {
                    let pair = [b[2 * at], b[2 * at + 1]];
                    if self.big_endian {
                        u16::from_be_bytes(pair)
                    } else {
                        u16::from_le_bytes(pair)
                    }
                };
                for x in per_pixel..row.len() / 2 {
                    let v = read(&*row, x).wrapping_add(read(&*row, x - per_pixel));
                    let bytes = if self.big_endian {
                        v.to_be_bytes()
                    } else {
                        v.to_le_bytes()
                    };
                    row[2 * x..2 * x + 2].copy_from_slice(&bytes);
                }
            }
        }
    }

    /// Sample `s` of pixel `x` in row `row` of a chunk's planes, as stored.
    fn sample(&self, planes: &[Cow<[u8]>], row: usize, x: usize, s: usize) -> u16 {
        let (buf, index) = if self.planar {
            (&planes[s], x)
        } else {
            (&planes[0], x * self.samples + s)
        };
        let at = row * self.row_bytes();
        match self.bits {
            8 => u16::from(buf[at + index]),
            16 => {
                let pair = [buf[at + 2 * index], buf[at + 2 * index + 1]];
                if self.big_endian {
                    u16::from_be_bytes(pair)
                } else {
                    u16::from_le_bytes(pair)
                }
            }
            bits => {
                let bit = index * usize::from(bits);
                let byte = buf[at + bit / 8];
                let shift = 8 - usize::from(bits) - bit % 8;
                u16::from(byte >> shift) & ((1 << bits) - 1)
            }
        }
    }

    /// A stored sample as 8 bits, as Pillow reads it.
    fn eight(&self, v: u16) -> u8 {
        match self.bits {
            1 => (v * 255) as u8,
            2 => (v * 85) as u8,
            4 => (v * 17) as u8,
            8 => v as u8,
            // Pillow's `I;16` to `L` clips; its 16-bit colour modes keep the high byte.
            _ if matches!(
                self.photometric,
                Photometric::BlackIsZero | Photometric::WhiteIsZero
            ) =>
            {
                v.min(255) as u8
            }
            _ => (v >> 8) as u8,
        }
    }

    /// `n` pixels of row `row` of a chunk, in the writer's layout.
    fn convert_row(
        &self,
        planes: &[Cow<[u8]>],
        palette: &[[u8; 3]],
        row: usize,
        n: usize,
        out: &mut [u8],
    ) {
        let channels = self.layout().channels();
        let colour = channels - usize::from(self.alpha != Alpha::None);
        for (x, px) in out.chunks_exact_mut(channels).take(n).enumerate() {
            let s = |i| self.eight(self.sample(planes, row, x, i));
            match self.photometric {
                Photometric::BlackIsZero => px[0] = s(0),
                Photometric::WhiteIsZero => px[0] = 255 - s(0),
                Photometric::Rgb => {
                    for (i, c) in px[..3].iter_mut().enumerate() {
                        *c = s(i);
                    }
                }
                Photometric::Palette => {
                    let index = usize::from(self.sample(planes, row, x, 0));
                    px[..3].copy_from_slice(&palette[index]);
                }
                Photometric::Cmyk => {
                    // Pillow's cmyk2rgb.
                    let nk = 255 - u32::from(s(3));
                    for (i, c) in px[..3].iter_mut().enumerate() {
                        *c = (nk - mul_div_255(u32::from(s(i)), nk)) as u8;
                    }
                }
                Photometric::YCbCr => {
                    let rgb = self.ycbcr_to_rgb(s(0), s(1), s(2));
                    px[..3].copy_from_slice(&rgb);
                }
            }
            if self.alpha != Alpha::None {
                // The first extra sample follows the colour samples.
                let a = s(colour);
                px[colour] = a;
                if self.alpha == Alpha::Premultiplied && a != 255 {
                    // Pillow's `RGBa` unpacker: clear where transparent, else divided by alpha.
                    for c in &mut px[..colour] {
                        *c = match a {
                            0 => 0,
                            a => (255 * u32::from(*c) / u32::from(a)).min(255) as u8,
                        };
                    }
                }
            }
        }
    }

    fn ycbcr_to_rgb(&self, y: u8, cb: u8, cr: u8) -> [u8; 3] {
        let (kr, kb) = self.ycbcr;
        let kg = 1.0 - kr - kb;
        let (y, cb, cr) = (f32::from(y), f32::from(cb) - 128.0, f32::from(cr) - 128.0);
        let r = y + 2.0 * (1.0 - kr) * cr;
        let b = y + 2.0 * (1.0 - kb) * cb;
        let g = (y - kr * r - kb * b) / kg;
        [r, g, b].map(|v| v.round().clamp(0.0, 255.0) as u8)
    }

    /// The colour map's entries, their high bytes (as Pillow).
    fn palette(&self, data: &[u8]) -> Result<Vec<[u8; 3]>> {
        let Some(map) = self.colormap else {
            return Ok(Vec::new());
        };
        let r = self.reader(data);
        let n = 1usize << self.bits;
        (0..n)
            .map(|i| {
                let c = |plane: usize| r.get(map, plane * n + i).map(|v| (v >> 8) as u8);
                Ok([c(0)?, c(1)?, c(2)?])
            })
            .collect()
    }

    /// A JPEG strip or tile: the tables spliced in front of it, decoded by zune-jpeg; returns
    /// the samples and their width and height.
    fn jpeg(&self, data: &[u8], i: usize, limits: &Limits) -> Result<(Vec<u8>, usize, usize)> {
        use zune_core::bytestream::ZCursor;
        use zune_core::colorspace::ColorSpace;
        use zune_core::options::DecoderOptions;
        let r = self.reader(data);
        let (start, end) = self.chunk_range(&r, i)?;
        let chunk = &data[start..end];
        let stream: Cow<[u8]> = match self.jpeg_tables {
            Some(t) if t.count > 4 && chunk.len() > 2 => {
                let tables = &data[t.at..t.at + t.count];
                let tables = tables.strip_suffix(&[0xFF, 0xD9]).unwrap_or(tables);
                let mut joined = Vec::with_capacity(tables.len() + chunk.len());
                joined.extend_from_slice(tables);
                joined.extend_from_slice(&chunk[2..]);
                Cow::Owned(joined)
            }
            _ => Cow::Borrowed(chunk),
        };
        let gray = self.photometric == Photometric::BlackIsZero;
        let max = limits.max_dimension as usize;
        let options = DecoderOptions::default()
            .set_max_width(max)
            .set_max_height(max)
            .set_strict_mode(true)
            .jpeg_set_out_colorspace(if gray {
                ColorSpace::Luma
            } else {
                ColorSpace::RGB
            });
        let mut decoder =
            zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(&stream[..]), options);
        let samples = decoder
            .decode()
            .map_err(|e| invalid(format!("strip or tile {i}: JPEG: {e:?}")))?;
        let info = decoder
            .info()
            .ok_or_else(|| invalid("JPEG without a frame"))?;
        let (w, h) = (usize::from(info.width), usize::from(info.height));
        if samples.len() != w * h * if gray { 1 } else { 3 } {
            return Err(invalid(format!("strip or tile {i}: JPEG decoded short")));
        }
        Ok((samples, w, h))
    }

    /// A subsampled YCbCr chunk to RGB, chroma repeated over each block (libtiff's RGBA
    /// interface, which Pillow reads these through).
    fn upsample(&self, chunk: &[u8], rows: usize) -> Vec<u8> {
        let (h, v) = self.subsampling;
        let w = self.chunk_w;
        let mut rgb = vec![0; w * rows * 3];
        let blocks_across = w.div_ceil(h);
        for (b, block) in chunk.chunks_exact(h * v + 2).enumerate() {
            let (bx, by) = (b % blocks_across * h, b / blocks_across * v);
            let (cb, cr) = (block[h * v], block[h * v + 1]);
            for dy in 0..v {
                for dx in 0..h {
                    let (x, y) = (bx + dx, by + dy);
                    if x < w && y < rows {
                        let at = (y * w + x) * 3;
                        rgb[at..at + 3].copy_from_slice(&self.ycbcr_to_rgb(
                            block[dy * h + dx],
                            cb,
                            cr,
                        ));
                    }
                }
            }
        }
        rgb
    }

    /// Whether rows can go to the writer as stored: 8-bit, interleaved, gray or RGB, with
    /// straight alpha or none, nothing to convert.
    fn rows_as_stored(&self) -> bool {
        self.bits == 8
            && !self.planar
            && matches!(
                self.photometric,
                Photometric::BlackIsZero | Photometric::Rgb
            )
            && self.samples == self.layout().channels()
            && self.alpha != Alpha::Premultiplied
    }
}

/// Pillow's `MULDIV255`: `a * b / 255`, rounded.
fn mul_div_255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// PackBits into `out`; returns the bytes written (stops when `out` is full).
fn unpack_bits(input: &[u8], out: &mut [u8]) -> usize {
    let (mut i, mut o) = (0, 0);
    while o < out.len() && i < input.len() {
        let n = input[i] as i8;
        i += 1;
        if n >= 0 {
            let len = (n as usize + 1).min(out.len() - o).min(input.len() - i);
            out[o..o + len].copy_from_slice(&input[i..i + len]);
            (i, o) = (i + n as usize + 1, o + len);
        } else if n != -128 {
            let Some(&byte) = input.get(i) else { break };
            let len = ((1 - isize::from(n)) as usize).min(out.len() - o);
            out[o..o + len].fill(byte);
            (i, o) = (i + 1, o + len);
        }
    }
    o
}

impl Source for TiffHeader {
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
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        let (width, height) = (self.width as usize, self.height as usize);
        let layout = self.layout();
        let channels = layout.channels();
        let mut writer = PlaneWriter::new(width, height, layout, flatten_alpha);
        let palette = self.palette(data)?;
        let mut row = vec![0u8; self.chunk_w.min(width) * channels];
        let per_plane = self.across() * self.down();
        for down in 0..self.down() {
            for across in 0..self.across() {
                cancel.check()?;
                let i = down * self.across() + across;
                let rows = self.rows(down);
                let x0 = across * self.chunk_w;
                let n = self.chunk_w.min(width - x0);
                let y0 = down * self.chunk_h;
                let shown = rows.min(height - y0);
                if self.compression == JPEG {
                    let (samples, w, h) = self.jpeg(data, i, limits)?;
                    if w < n || h < shown {
                        return Err(invalid(format!(
                            "strip or tile {i}: a {w}x{h} JPEG for {n}x{shown} pixels"
                        )));
                    }
                    for r in 0..shown {
                        let at = r * w * channels;
                        writer.span(y0 + r, x0, &samples[at..at + n * channels]);
                    }
                    continue;
                }
                let planes = (0..self.planes())
                    .map(|p| self.decompress(data, p * per_plane + i, rows))
                    .collect::<Result<Vec<_>>>()?;
                if self.subsampling != (1, 1) {
                    let rgb = self.upsample(&planes[0], rows);
                    for r in 0..shown {
                        let at = r * self.chunk_w * 3;
                        writer.span(y0 + r, x0, &rgb[at..at + n * 3]);
                    }
                    continue;
                }
                for r in 0..shown {
                    if self.rows_as_stored() {
                        let at = r * self.row_bytes();
                        writer.span(y0 + r, x0, &planes[0][at..at + n * channels]);
                    } else {
                        self.convert_row(&planes, &palette, r, n, &mut row);
                        writer.span(y0 + r, x0, &row[..n * channels]);
                    }
                }
            }
        }
        Ok(writer.finish())
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let alpha = self.alpha != Alpha::None && !flatten_alpha;
        let planes = if alpha { 2 * pixels } else { pixels };
        heap.alloc(planes);
        let channels = self.layout().channels() as u64;
        let row = self.chunk_w.min(self.width as usize) as u64 * channels;
        let palette = if self.colormap.is_some() {
            3u64 << self.bits
        } else {
            0
        };
        heap.alloc(row + palette);
        // One chunk at a time: its compressed copy (bits reversed), its decompressed planes, and
        // what is made from them (JPEG: the joined stream and zune-jpeg's samples and rows;
        // subsampled YCbCr: RGB).
        let (w, h) = (self.chunk_w as u64, self.chunk_h as u64);
        let chunk = if self.compression == JPEG {
            let stream = w * h;
            stream + w * h * channels + 2 * w * 16 * channels
        } else {
            let stored = self.chunk_bytes(self.chunk_h) as u64 * self.planes() as u64;
            let reversed = if self.fill_reversed { stored } else { 0 };
            // Uncompressed chunks are read in place unless changed (bits reversed, predictor).
            let in_place = self.compression == NONE && !self.fill_reversed && self.predictor == 1;
            // zune-inflate's output vector grows past its size hint before it is cut to the
            // strip (measured by tests/memory.rs: 1.75x a 1 MB strip): taken as twice the strip.
            let decompressed = match self.compression {
                _ if in_place => 0,
                DEFLATE | DEFLATE_OLD => 2 * stored,
                _ => stored,
            };
            let upsampled = if self.subsampling == (1, 1) {
                0
            } else {
                w * h * 3
            };
            reversed + decompressed + upsampled
        };
        heap.alloc(chunk);
        heap.free(chunk + row + palette);
        alpha
    }
}
