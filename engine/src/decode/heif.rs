//! The HEIF container (ISO/IEC 23008-12), which AVIF and HEIC share: our own reader of its boxes,
//! and the one [`Source`] for both, whose coded items go to the codec of their kind (`avif.rs`:
//! dav1d; `heic.rs`: libde265) and come back as planes, reduced here to luma.
//!
//! What is read: `ftyp`; in `meta`, `hdlr`, `pitm`, `iinf`/`infe`, `iloc` (construction methods 0,
//! file offsets, and 1, `idat`), `iref` (`dimg` for grid tiles and overlay layers, `auxl` for alpha), `idat`, and
//! `iprp`'s `ipco`/`ipma` with the properties `ispe`, `clap`, `irot`, `imir`, `colr` (`nclx`: matrix and
//! range; an ICC profile is not applied, as Pillow's `convert("L")` does not), `av1C`, `hvcC` and
//! `auxC`. The primary item is shown (the first image of a multi-image file, as Pillow and
//! pillow-heif show it); a `grid` item (as iPhones write HEIC) is decoded tile by tile into one
//! canvas cropped to the grid's size; an `iovl` overlay draws its layers (coded or grids, each
//! with its alpha) over a canvas of its fill colour. Every size and count comes from the header and is checked
//! against the limits, and every box against the bytes there are, before anything is allocated
//! for pixels.
//!
//! Luma straight from the codec's Y plane where that is exact: with a BT.601 matrix (or
//! none: monochrome) the chroma terms of Pillow's BT.601 luma of the decoded RGB cancel, so
//! luma is Y mapped through the file's range and bit depth (a copy, for 8-bit full range). Any
//! other matrix (BT.709, BT.2020) converts honestly: luma is Y plus the chroma terms that do not
//! cancel, chroma taken at each pixel (nearest sample).

use std::borrow::Cow;
use std::ops::Range;

use super::codec_heap::{Chroma, PictureLayout};
use super::{Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::luma;
use crate::pixels::GrayImage;
use crate::{Cancel, Format, Limits, Orientation};

/// The codec of a file's coded items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// AV1 (`av01` items, `av1C`): AVIF.
    Av1,
    /// HEVC (`hvc1` items, `hvcC`): HEIC.
    Hevc,
}

impl Codec {
    fn format(self) -> Format {
        match self {
            Codec::Av1 => Format::Avif,
            Codec::Hevc => Format::Heic,
        }
    }

    fn item_type(self) -> &'static [u8; 4] {
        match self {
            Codec::Av1 => b"av01",
            Codec::Hevc => b"hvc1",
        }
    }

    fn config_box(self) -> &'static [u8; 4] {
        match self {
            Codec::Av1 => b"av1C",
            Codec::Hevc => b"hvcC",
        }
    }
}

/// Colour signalling: the matrix (ISO/IEC 23091-2 `MatrixCoefficients`) and the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Signal {
    pub matrix: u16,
    pub full_range: bool,
}

/// A decoded picture as a codec hands it over: planes borrowed from the codec's own buffers.
/// Samples are bytes at 8 bits, native-endian 16-bit words above.
pub(crate) struct Picture<'a> {
    pub width: usize,
    pub height: usize,
    pub depth: u32,
    /// Y, then Cb and Cr (empty for monochrome).
    pub planes: [&'a [u8]; 3],
    /// Bytes from one row to the next, per plane.
    pub strides: [usize; 3],
    /// Chroma subsampling as shifts (`(1, 1)` for 4:2:0); unused for monochrome.
    pub chroma_shift: (u32, u32),
    pub monochrome: bool,
    /// What the bitstream itself says, where the codec reports it.
    pub signal: Option<Signal>,
}

/// What a header says about one coded item: where its codec configuration and data are.
#[derive(Debug, Clone)]
struct Coded {
    config: Range<usize>,
    extents: Vec<Range<usize>>,
    width: u32,
    height: u32,
    signal: Option<Signal>,
    sampling: Sampling,
}

/// A coded item's chroma sampling and its luma and chroma depths, as its codec configuration
/// (`av1C`, `hvcC`) declares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sampling {
    chroma: Chroma,
    depths: (u32, u32),
}

impl Sampling {
    /// From an `av1C` body (AV1-ISOBMFF 2.3.3): its third byte's high_bitdepth, twelve_bit,
    /// monochrome and chroma subsampling flags.
    fn av1c(r: &mut Reader) -> Result<Sampling> {
        let flags = r.bytes(3)?[2];
        let depth = match (flags >> 6 & 1, flags >> 5 & 1) {
            (0, _) => 8,
            (_, 0) => 10,
            _ => 12,
        };
        let chroma = match (flags >> 4 & 1, flags >> 3 & 1, flags >> 2 & 1) {
            (1, _, _) => Chroma::Monochrome,
            (_, 1, 1) => Chroma::Yuv420,
            (_, 1, 0) => Chroma::Yuv422,
            _ => Chroma::Yuv444,
        };
        Ok(Sampling {
            chroma,
            depths: (depth, depth),
        })
    }

    /// From an `hvcC` body (ISO/IEC 14496-15 8.3.3.1): chromaFormat and the two bit depths,
    /// its 17th to 19th bytes.
    fn hvcc(r: &mut Reader) -> Result<Sampling> {
        let b = r.bytes(19)?;
        let chroma = match b[16] & 3 {
            0 => Chroma::Monochrome,
            1 => Chroma::Yuv420,
            2 => Chroma::Yuv422,
            _ => Chroma::Yuv444,
        };
        Ok(Sampling {
            chroma,
            depths: (u32::from(b[17] & 7) + 8, u32::from(b[18] & 7) + 8),
        })
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Coded(Coded),
    /// Tiles, row by row, each `tile_width` x `tile_height`.
    Grid {
        columns: u32,
        tile_width: u32,
        tile_height: u32,
        tiles: Vec<Coded>,
    },
    /// Layers drawn in order over a canvas of one colour (`iovl`), `fill` its luma over white.
    Overlay {
        fill: u8,
        layers: Vec<Layer>,
    },
}

/// One layer of an overlay: an image (coded or a grid), its alpha, and where its top-left corner
/// goes on the canvas (either may be negative, or past the canvas: what falls outside is cut).
#[derive(Debug, Clone)]
struct Layer {
    image: Image,
    alpha: Option<Image>,
    x: i64,
    y: i64,
}

/// An image item: coded, or a grid of coded tiles; its size as the container shows it.
#[derive(Debug, Clone)]
struct Image {
    width: u32,
    height: u32,
    kind: Kind,
}

/// A HEIF file's header read: the primary image, its alpha, its crop, its orientation.
#[derive(Debug)]
pub(crate) struct HeifHeader {
    codec: Codec,
    image: Image,
    alpha: Option<Image>,
    /// The clean aperture (`clap`), where it is smaller than the image.
    crop: Option<Crop>,
    orientation: Orientation,
}

/// A rectangle of the decoded image, in its stored (unrotated) coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Crop {
    x: u32,
    y: u32,
    width: u32,
    height: u32,
}

/// A `clap` box's four fractions (width, height, horizontal and vertical offset of the centre),
/// as numerator and denominator.
#[derive(Debug, Clone, Copy)]
struct CleanAperture([(i64, i64); 4]);

impl CleanAperture {
    /// The crop within a `width` x `height` image, rounded and clamped as libheif (which
    /// pillow-heif uses) does: the left edge is the centre minus half the aperture's width,
    /// truncated; the right edge the left one plus the width minus one, rounded; then both are
    /// kept inside the image.
    fn crop(self, width: u32, height: u32, format: Format) -> Result<Crop> {
        let [(cw_n, cw_d), (ch_n, ch_d), (ho_n, ho_d), (vo_n, vo_d)] = self.0;
        let edges = |size: u32, (ap_n, ap_d): (i64, i64), (off_n, off_d): (i64, i64)| {
            let (ap_n, ap_d, off_n, off_d) = (
                i128::from(ap_n),
                i128::from(ap_d),
                i128::from(off_n),
                i128::from(off_d),
            );
            // left = off + (size - 1) / 2 - (ap - 1) / 2, over the denominator 2 * off_d * ap_d.
            let num =
                2 * off_n * ap_d + (i128::from(size) - 1) * off_d * ap_d - (ap_n - ap_d) * off_d;
            let first = num / (2 * off_d * ap_d);
            // right = round(ap - 1 + first).
            let last = (ap_n - ap_d + first * ap_d + ap_d / 2) / ap_d;
            (first.max(0), last.min(i128::from(size) - 1))
        };
        if [cw_d, ch_d, ho_d, vo_d].iter().any(|&d| d <= 0) || cw_n <= 0 || ch_n <= 0 {
            return Err(Error::invalid(
                format,
                "a clean aperture ('clap') with a zero or negative size or denominator",
            ));
        }
        let (left, right) = edges(width, (cw_n, cw_d), (ho_n, ho_d));
        let (top, bottom) = edges(height, (ch_n, ch_d), (vo_n, vo_d));
        if left > right || top > bottom {
            return Err(Error::invalid(
                format,
                format!("a clean aperture ('clap') outside its {width}x{height} image"),
            ));
        }
        // All four are within 0..size, so they fit.
        Ok(Crop {
            x: left as u32,
            y: top as u32,
            width: (right - left + 1) as u32,
            height: (bottom - top + 1) as u32,
        })
    }
}

/// A box: its type and body, as offsets into the file.
#[derive(Debug, Clone, Copy)]
struct Bx {
    kind: [u8; 4],
    body: (usize, usize),
}

/// Big-endian reading of a box body, each read checked against the body's end.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    end: usize,
    format: Format,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], (pos, end): (usize, usize), format: Format) -> Self {
        Reader {
            data,
            pos,
            end,
            format,
        }
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.end);
        let Some(end) = end else {
            return Err(Error::invalid(
                self.format,
                format!("a box ends {} bytes early", n - (self.end - self.pos)),
            ));
        };
        let out = &self.data[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn uint(&mut self, n: usize) -> Result<u64> {
        Ok(self
            .bytes(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.bytes(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(self.uint(2)? as u16)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(self.uint(4)? as u32)
    }

    fn fourcc(&mut self) -> Result<[u8; 4]> {
        Ok(self.bytes(4)?.try_into().expect("4 bytes"))
    }

    /// A full box's version and flags.
    fn full(&mut self) -> Result<(u8, u32)> {
        let v = self.u32()?;
        Ok(((v >> 24) as u8, v & 0xFF_FFFF))
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    /// The boxes from here to the end, each checked to fit.
    fn boxes(&mut self) -> Result<Vec<Bx>> {
        let mut out = Vec::new();
        while self.pos < self.end {
            let start = self.pos;
            let size = self.u32()? as u64;
            let kind = self.fourcc()?;
            let size = match size {
                1 => self.uint(8)?,
                0 => (self.end - start) as u64,
                s => s,
            };
            let header = (self.pos - start) as u64;
            if size < header || size > (self.end - start) as u64 {
                return Err(Error::invalid(
                    self.format,
                    format!(
                        "truncated: the '{}' box claims {size} bytes, {} are there",
                        String::from_utf8_lossy(&kind),
                        self.end - start
                    ),
                ));
            }
            let end = start + size as usize;
            out.push(Bx {
                kind,
                body: (self.pos, end),
            });
            self.pos = end;
        }
        Ok(out)
    }
}

/// One item's properties, as `ipma` associates them.
#[derive(Default, Clone)]
struct Props {
    size: Option<(u32, u32)>,
    config: Option<(Range<usize>, Sampling)>,
    signal: Option<Signal>,
    aux_alpha: bool,
    clean_aperture: Option<CleanAperture>,
    /// `irot` and `imir`, in association order, folded into one orientation.
    orientation: Orientation,
}

/// Orientation as "mirror left-right, then turn clockwise by quarter turns", and its EXIF value.
fn exif_value(turns: u8, mirror: bool) -> u8 {
    match (turns % 4, mirror) {
        (0, false) => 1,
        (0, true) => 2,
        (2, false) => 3,
        (2, true) => 4,
        (3, true) => 5,
        (1, false) => 6,
        (1, true) => 7,
        (3, false) => 8,
        _ => unreachable!("turns are taken modulo 4"),
    }
}

fn decompose(orientation: Orientation) -> (u8, bool) {
    match orientation.value() {
        2 => (0, true),
        3 => (2, false),
        4 => (2, true),
        5 => (3, true),
        6 => (1, false),
        7 => (1, true),
        8 => (3, false),
        _ => (0, false),
    }
}

/// `then` applied after `orientation`: a clockwise turn, or a mirror (left-right when
/// `horizontal`, else top-bottom).
enum Step {
    Turn(u8),
    Mirror { left_right: bool },
}

fn compose(orientation: Orientation, step: Step) -> Orientation {
    let (turns, mirror) = decompose(orientation);
    let (turns, mirror) = match step {
        Step::Turn(k) => (turns + k, mirror),
        // A left-right mirror after a turn is the opposite turn after a mirror.
        Step::Mirror { left_right: true } => ((4 - turns) % 4, !mirror),
        Step::Mirror { left_right: false } => ((6 - turns) % 4, !mirror),
    };
    Orientation::new(exif_value(turns, mirror))
}

struct Item {
    id: u32,
    kind: [u8; 4],
    /// Where its data is: absolute file ranges, in order.
    extents: Vec<Range<usize>>,
}

/// Everything `meta` says, parsed.
struct Meta {
    primary: u32,
    items: Vec<Item>,
    /// (type, from, to), in file order.
    refs: Vec<([u8; 4], u32, Vec<u32>)>,
    props: Vec<(u32, Props)>,
}

impl Meta {
    fn item(&self, id: u32, format: Format) -> Result<&Item> {
        self.items
            .iter()
            .find(|i| i.id == id)
            .ok_or_else(|| Error::invalid(format, format!("item {id} is referenced, not listed")))
    }

    fn props(&self, id: u32) -> Props {
        self.props
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    fn refs_from<'s>(&'s self, kind: &'s [u8; 4], from: u32) -> impl Iterator<Item = &'s [u32]> {
        self.refs
            .iter()
            .filter(move |(k, f, _)| k == kind && *f == from)
            .map(|(_, _, to)| to.as_slice())
    }
}

fn parse_meta(data: &[u8], meta: (usize, usize), format: Format) -> Result<Meta> {
    let invalid = |reason: String| Error::invalid(format, reason);
    let mut r = Reader::new(data, meta, format);
    r.full()?;
    let children = r.boxes()?;
    let find = |kind: &[u8; 4]| children.iter().find(|b| &b.kind == kind).copied();
    if let Some(hdlr) = find(b"hdlr") {
        let mut r = Reader::new(data, hdlr.body, format);
        r.full()?;
        r.u32()?;
        let handler = r.fourcc()?;
        if &handler != b"pict" {
            return Err(Error::unsupported(format!(
                "a HEIF file whose handler is '{}', not 'pict' (an image)",
                String::from_utf8_lossy(&handler)
            )));
        }
    }
    let pitm = find(b"pitm").ok_or_else(|| invalid("no primary item ('pitm')".into()))?;
    let mut r = Reader::new(data, pitm.body, format);
    let primary = match r.full()?.0 {
        0 => u32::from(r.u16()?),
        _ => r.u32()?,
    };

    // Item types.
    let iinf = find(b"iinf").ok_or_else(|| invalid("no item list ('iinf')".into()))?;
    let mut r = Reader::new(data, iinf.body, format);
    match r.full()?.0 {
        0 => r.u16()? as u32,
        _ => r.u32()?,
    };
    let mut types = Vec::new();
    for infe in r.boxes()?.into_iter().filter(|b| &b.kind == b"infe") {
        let mut r = Reader::new(data, infe.body, format);
        let (version, _) = r.full()?;
        let id = match version {
            2 => u32::from(r.u16()?),
            3 => r.u32()?,
            // Versions 0 and 1 carry no item type: nothing an image is made of.
            _ => continue,
        };
        r.u16()?;
        types.push((id, r.fourcc()?));
    }

    // Item data: iloc's extents, idat's for construction method 1.
    let idat = find(b"idat").map(|b| b.body);
    let iloc = find(b"iloc").ok_or_else(|| invalid("no item locations ('iloc')".into()))?;
    let mut r = Reader::new(data, iloc.body, format);
    let (version, _) = r.full()?;
    let sizes = r.u16()?;
    let (offset_size, length_size) = (usize::from(sizes >> 12), usize::from((sizes >> 8) & 15));
    let base_size = usize::from((sizes >> 4) & 15);
    let index_size = if version >= 1 {
        usize::from(sizes & 15)
    } else {
        0
    };
    let count = if version < 2 {
        u32::from(r.u16()?)
    } else {
        r.u32()?
    };
    let mut items = Vec::new();
    for _ in 0..count {
        let id = if version < 2 {
            u32::from(r.u16()?)
        } else {
            r.u32()?
        };
        let method = if version >= 1 { r.u16()? & 15 } else { 0 };
        r.u16()?; // data reference index: 0, this file
        let base = r.uint(base_size)?;
        let extent_count = r.u16()?;
        let mut extents = Vec::new();
        for _ in 0..extent_count {
            r.uint(index_size)?;
            let offset = base
                .checked_add(r.uint(offset_size)?)
                .ok_or_else(|| invalid(format!("item {id}'s offset overflows")))?;
            let length = r.uint(length_size)?;
            let (origin, end) = match method {
                0 => (0, data.len()),
                1 => idat.ok_or_else(|| invalid(format!("item {id} is in an absent 'idat'")))?,
                m => {
                    return Err(Error::unsupported(format!(
                        "HEIF item {id} built by construction method {m}"
                    )));
                }
            };
            let start = (origin as u64).saturating_add(offset);
            // Length 0: to the end of the file (method 0) or of idat.
            let stop = if length == 0 {
                end as u64
            } else {
                start.saturating_add(length)
            };
            if stop > end as u64 || start > stop {
                return Err(invalid(format!(
                    "truncated: item {id}'s data ends at byte {stop}, the file (or idat) at {end}"
                )));
            }
            extents.push(start as usize..stop as usize);
        }
        if let Some(&(_, kind)) = types.iter().find(|(i, _)| *i == id) {
            items.push(Item { id, kind, extents });
        }
    }
    for (id, kind) in &types {
        if !items.iter().any(|i| i.id == *id) {
            items.push(Item {
                id: *id,
                kind: *kind,
                extents: Vec::new(),
            });
        }
    }

    let mut refs = Vec::new();
    if let Some(iref) = find(b"iref") {
        let mut r = Reader::new(data, iref.body, format);
        let (version, _) = r.full()?;
        let id = |r: &mut Reader| -> Result<u32> {
            if version == 0 {
                Ok(u32::from(r.u16()?))
            } else {
                r.u32()
            }
        };
        for b in r.boxes()? {
            let mut r = Reader::new(data, b.body, format);
            let from = id(&mut r)?;
            let n = r.u16()?;
            let to = (0..n).map(|_| id(&mut r)).collect::<Result<Vec<_>>>()?;
            refs.push((b.kind, from, to));
        }
    }

    let props = match find(b"iprp") {
        Some(iprp) => parse_properties(data, iprp.body, format)?,
        None => Vec::new(),
    };
    Ok(Meta {
        primary,
        items,
        refs,
        props,
    })
}

/// `ipco`'s properties, associated to items by `ipma`.
fn parse_properties(
    data: &[u8],
    iprp: (usize, usize),
    format: Format,
) -> Result<Vec<(u32, Props)>> {
    let children = Reader::new(data, iprp, format).boxes()?;
    let Some(ipco) = children.iter().find(|b| &b.kind == b"ipco") else {
        return Ok(Vec::new());
    };
    let properties = Reader::new(data, ipco.body, format).boxes()?;
    let mut out: Vec<(u32, Props)> = Vec::new();
    for ipma in children.iter().filter(|b| &b.kind == b"ipma") {
        let mut r = Reader::new(data, ipma.body, format);
        let (version, flags) = r.full()?;
        let entries = r.u32()?;
        for _ in 0..entries {
            let id = if version < 1 {
                u32::from(r.u16()?)
            } else {
                r.u32()?
            };
            let n = r.u8()?;
            let mut props = Props::default();
            for _ in 0..n {
                let index = if flags & 1 == 1 {
                    usize::from(r.u16()? & 0x7FFF)
                } else {
                    usize::from(r.u8()? & 0x7F)
                };
                // Index 0: no property.
                let Some(prop) = index.checked_sub(1).and_then(|i| properties.get(i)) else {
                    continue;
                };
                apply_property(data, prop, &mut props, format)?;
            }
            out.push((id, props));
        }
    }
    Ok(out)
}

fn apply_property(data: &[u8], prop: &Bx, props: &mut Props, format: Format) -> Result<()> {
    let mut r = Reader::new(data, prop.body, format);
    match &prop.kind {
        b"ispe" => {
            r.full()?;
            props.size = Some((r.u32()?, r.u32()?));
        }
        b"av1C" => props.config = Some((prop.body.0..prop.body.1, Sampling::av1c(&mut r)?)),
        b"hvcC" => props.config = Some((prop.body.0..prop.body.1, Sampling::hvcc(&mut r)?)),
        b"colr" => {
            let kind = r.fourcc()?;
            if &kind == b"nclx" {
                let (_primaries, _transfer) = (r.u16()?, r.u16()?);
                let matrix = r.u16()?;
                let full_range = r.u8()? >> 7 == 1;
                props.signal = Some(Signal { matrix, full_range });
            }
        }
        b"auxC" => {
            r.full()?;
            let urn = r.bytes(r.remaining())?;
            let urn = urn.split(|&b| b == 0).next().unwrap_or_default();
            props.aux_alpha = matches!(
                urn,
                b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha" | b"urn:mpeg:hevc:2015:auxid:1"
            );
        }
        b"clap" => {
            // The standard orders a crop before any turn or mirror; one after them would crop
            // the turned image, which this reader does not do.
            if props.orientation != Orientation::default() {
                return Err(Error::unsupported(format!(
                    "a {format} clean aperture ('clap') after a rotation or mirror"
                )));
            }
            let mut fractions = [(0i64, 0i64); 4];
            for (i, fraction) in fractions.iter_mut().enumerate() {
                let (n, d) = (r.u32()?, r.u32()?);
                // The offsets (the last two) are signed.
                let n = if i < 2 {
                    i64::from(n)
                } else {
                    i64::from(n as i32)
                };
                *fraction = (n, i64::from(d));
            }
            props.clean_aperture = Some(CleanAperture(fractions));
        }
        b"irot" => {
            // Anti-clockwise quarter turns.
            let anticlockwise = r.u8()? & 3;
            props.orientation = compose(props.orientation, Step::Turn((4 - anticlockwise) % 4));
        }
        b"imir" => {
            // Mode (formerly "axis") 0 exchanges top and bottom, 1 left and right: as libheif
            // (`heif_transform_mirror_direction_vertical` = 0) and libavif read it, and as
            // avifenc writes it (`--imir 0`: top-to-bottom). Shown by the formats test's
            // generated `imir` files against Pillow.
            let left_right = r.u8()? & 1 == 1;
            props.orientation = compose(props.orientation, Step::Mirror { left_right });
        }
        _ => {}
    }
    Ok(())
}

/// Reads a HEIF file's header; `format` is what [`crate::sniff`] named from its brands.
pub(crate) fn read_header(format: Format, data: &[u8], limits: &Limits) -> Result<HeifHeader> {
    let codec = match format {
        Format::Avif => Codec::Av1,
        _ => Codec::Hevc,
    };
    let top = Reader::new(data, (0, data.len()), format).boxes()?;
    let meta = top
        .iter()
        .find(|b| &b.kind == b"meta")
        .ok_or_else(|| Error::invalid(format, "no 'meta' box"))?;
    let meta = parse_meta(data, meta.body, format)?;
    let image = image_item(&meta, meta.primary, codec, limits, data)?;
    let alpha = alpha_of(&meta, meta.primary, &image, codec, limits, data)?;
    let props = meta.props(meta.primary);
    let crop = props
        .clean_aperture
        .map(|clap| clap.crop(image.width, image.height, format))
        .transpose()?
        .filter(|c| (c.width, c.height) != (image.width, image.height));
    Ok(HeifHeader {
        codec,
        image,
        alpha,
        crop,
        orientation: props.orientation,
    })
}

/// The alpha plane of item `id` (shown as `image`): the `auxl` item whose `auxC` says alpha.
fn alpha_of(
    meta: &Meta,
    id: u32,
    image: &Image,
    codec: Codec,
    limits: &Limits,
    data: &[u8],
) -> Result<Option<Image>> {
    let format = codec.format();
    let alpha = meta
        .refs
        .iter()
        .filter(|(k, _, to)| k == b"auxl" && to.contains(&id))
        .map(|(_, from, _)| *from)
        .find(|&from| meta.props(from).aux_alpha)
        .map(|from| image_item(meta, from, codec, limits, data))
        .transpose()?;
    if let Some(alpha) = &alpha
        && (alpha.width, alpha.height) != (image.width, image.height)
    {
        return Err(Error::unsupported(format!(
            "a {format} alpha plane of {}x{} for a {}x{} image (a scaled alpha plane)",
            alpha.width, alpha.height, image.width, image.height
        )));
    }
    Ok(alpha)
}

/// An overlay item (`iovl`, ISO/IEC 23008-12 6.6.2.2): its canvas's fill colour and size from
/// its data, its layers from its `dimg` references, each with its own alpha. A layer may be coded
/// or a grid, not another overlay.
fn overlay(
    meta: &Meta,
    id: u32,
    item: &Item,
    codec: Codec,
    limits: &Limits,
    data: &[u8],
) -> Result<Image> {
    let format = codec.format();
    let (layer_ids, body) = derived(meta, id, item, data, format, "an overlay without layers")?;
    let mut r = Reader::new(&body, (0, body.len()), format);
    let size = field_size(&mut r)?;
    let [red, green, blue, alpha] =
        [r.u16()?, r.u16()?, r.u16()?, r.u16()?].map(|v| ((u32::from(v) + 128) / 257) as u8);
    let fill = luma::over_white(luma::luma(red, green, blue), alpha);
    let (width, height) = (r.uint(size)? as u32, r.uint(size)? as u32);
    limits.check_dimensions(width, height)?;
    let signed = |v: u64| {
        let bits = size as u32 * 8;
        ((v << (64 - bits)) as i64) >> (64 - bits)
    };
    let mut layers = Vec::with_capacity(layer_ids.len());
    for &layer in layer_ids {
        if &meta.item(layer, format)?.kind == b"iovl" {
            return Err(Error::unsupported(format!(
                "a {format} overlay of overlays"
            )));
        }
        let (x, y) = (signed(r.uint(size)?), signed(r.uint(size)?));
        let image = image_item(meta, layer, codec, limits, data)?;
        let alpha = alpha_of(meta, layer, &image, codec, limits, data)?;
        layers.push(Layer { image, alpha, x, y });
    }
    Ok(Image {
        width,
        height,
        kind: Kind::Overlay { fill, layers },
    })
}

/// A derived item's (grid's or overlay's) inputs, its 'dimg' references, and its descriptor,
/// the item's data; `missing` names the refusal when it has no inputs.
fn derived<'m, 'd>(
    meta: &'m Meta,
    id: u32,
    item: &Item,
    data: &'d [u8],
    format: Format,
    missing: &str,
) -> Result<(&'m [u32], Cow<'d, [u8]>)> {
    let inputs = meta
        .refs_from(b"dimg", id)
        .next()
        .ok_or_else(|| Error::invalid(format, format!("{missing} ('dimg')")))?;
    Ok((inputs, item_bytes(data, &item.extents)))
}

/// Reads a derived item descriptor's version and flags: the bytes of its sizes and offsets
/// (flag bit 0: 32 bits, else 16).
fn field_size(r: &mut Reader) -> Result<usize> {
    r.u8()?;
    Ok(if r.u8()? & 1 == 1 { 4 } else { 2 })
}

/// An image item (coded, a grid of coded items, or an overlay of those), every size in it
/// checked against the limits.
fn image_item(meta: &Meta, id: u32, codec: Codec, limits: &Limits, data: &[u8]) -> Result<Image> {
    let format = codec.format();
    let item = meta.item(id, format)?;
    let props = meta.props(id);
    match &item.kind {
        b"iovl" => overlay(meta, id, item, codec, limits, data),
        b"grid" => {
            let (tiles_ids, body) = derived(meta, id, item, data, format, "a grid without tiles")?;
            let mut r = Reader::new(&body, (0, body.len()), format);
            let size = field_size(&mut r)?;
            let rows = u32::from(r.u8()?) + 1;
            let columns = u32::from(r.u8()?) + 1;
            let (width, height) = (r.uint(size)? as u32, r.uint(size)? as u32);
            limits.check_dimensions(width, height)?;
            if tiles_ids.len() as u64 != u64::from(rows) * u64::from(columns) {
                return Err(Error::invalid(
                    format,
                    format!("a {columns}x{rows} grid with {} tiles", tiles_ids.len()),
                ));
            }
            let tiles = tiles_ids
                .iter()
                .map(|&tile| coded(meta, tile, codec, limits, props.signal))
                .collect::<Result<Vec<_>>>()?;
            let (tile_width, tile_height) = (tiles[0].width, tiles[0].height);
            let covers = u64::from(tile_width) * u64::from(columns) >= u64::from(width)
                && u64::from(tile_height) * u64::from(rows) >= u64::from(height);
            if !covers
                || tiles
                    .iter()
                    .any(|t| (t.width, t.height) != (tile_width, tile_height))
            {
                return Err(Error::invalid(
                    format,
                    format!("the grid's tiles do not cover its {width}x{height} canvas evenly"),
                ));
            }
            Ok(Image {
                width,
                height,
                kind: Kind::Grid {
                    columns,
                    tile_width,
                    tile_height,
                    tiles,
                },
            })
        }
        _ => {
            let coded = coded(meta, id, codec, limits, None)?;
            Ok(Image {
                width: coded.width,
                height: coded.height,
                kind: Kind::Coded(coded),
            })
        }
    }
}

/// A coded item of the file's codec, its size checked against the limits.
fn coded(
    meta: &Meta,
    id: u32,
    codec: Codec,
    limits: &Limits,
    inherited: Option<Signal>,
) -> Result<Coded> {
    let format = codec.format();
    let item = meta.item(id, format)?;
    if &item.kind != codec.item_type() {
        return Err(Error::unsupported(format!(
            "a {format} image item of type '{}'",
            String::from_utf8_lossy(&item.kind)
        )));
    }
    let props = meta.props(id);
    let (width, height) = props
        .size
        .ok_or_else(|| Error::invalid(format, format!("item {id} has no size ('ispe')")))?;
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            format,
            format!("item {id} is {width}x{height}"),
        ));
    }
    limits.check_dimensions(width, height)?;
    let (config, sampling) = props.config.ok_or_else(|| {
        Error::invalid(
            format,
            format!(
                "item {id} has no '{}'",
                String::from_utf8_lossy(codec.config_box())
            ),
        )
    })?;
    if item.extents.is_empty() {
        return Err(Error::invalid(format, format!("item {id} has no data")));
    }
    Ok(Coded {
        config,
        extents: item.extents.clone(),
        width,
        height,
        signal: props.signal.or(inherited),
        sampling,
    })
}

/// An item's bytes: borrowed when in one extent, joined when in several.
fn item_bytes<'d>(data: &'d [u8], extents: &[Range<usize>]) -> Cow<'d, [u8]> {
    match extents {
        [one] => Cow::Borrowed(&data[one.clone()]),
        many => Cow::Owned(
            many.iter()
                .flat_map(|r| &data[r.clone()])
                .copied()
                .collect(),
        ),
    }
}

/// Maps a picture's samples to 8-bit luma, for one signal. Samples of more than 8 bits are
/// rounded to 8, as libavif (Pillow's AVIF) and libheif 1.20 (pillow-heif 1.1) do.
struct LumaMap {
    /// Y to luma, for every sample value at the picture's depth.
    y: Vec<u8>,
    /// The chroma terms that do not cancel (Cb, Cr), in 8-bit luma per unit of normalised
    /// chroma; zero for BT.601.
    chroma: Option<(f32, f32)>,
    /// Y to luma before rounding, for the chroma path.
    y_linear: Vec<f32>,
    /// Chroma's centre and its scale to [-0.5, 0.5].
    chroma_mid: f32,
    chroma_scale: f32,
}

/// (Kr, Kb) of a `MatrixCoefficients` value, where it is a Y'CbCr matrix.
fn kr_kb(matrix: u16, format: Format) -> Result<Option<(f32, f32)>> {
    Ok(match matrix {
        // BT.601 (5, 6), and unspecified (2), which libavif and libheif read as BT.601.
        2 | 5 | 6 => None,
        1 => Some((0.2126, 0.0722)),
        4 => Some((0.30, 0.11)),
        7 => Some((0.212, 0.087)),
        9 | 10 => Some((0.2627, 0.0593)),
        other => {
            return Err(Error::unsupported(format!(
                "a {format} image with colour matrix {other} (ISO/IEC 23091-2)"
            )));
        }
    })
}

impl LumaMap {
    fn new(picture: &Picture, signal: Signal, format: Format) -> Result<LumaMap> {
        let depth = picture.depth;
        let max = (1u32 << depth) - 1;
        let scale = (1u32 << depth.saturating_sub(8)) as f32;
        let (y_off, y_range, c_range) = if signal.full_range {
            (0.0, max as f32, max as f32)
        } else {
            (16.0 * scale, 219.0 * scale, 224.0 * scale)
        };
        let y_linear: Vec<f32> = (0..=max)
            .map(|v| ((v as f32 - y_off) / y_range).clamp(0.0, 1.0) * 255.0)
            .collect();
        let y = y_linear
            .iter()
            .map(|&v| v.round().clamp(0.0, 255.0) as u8)
            .collect();
        let chroma = if picture.monochrome {
            None
        } else {
            kr_kb(signal.matrix, format)?.map(|(kr, kb)| {
                let kg = 1.0 - kr - kb;
                // R = Y + 2(1-Kr) Cr, B = Y + 2(1-Kb) Cb, G = (Y - Kr R - Kb B) / Kg; luma is
                // BT.601's sum of them, whose Y terms add to Y.
                let (r_cr, b_cb) = (2.0 * (1.0 - kr), 2.0 * (1.0 - kb));
                let (g_cr, g_cb) = (-kr * r_cr / kg, -kb * b_cb / kg);
                let cb = 0.587 * g_cb + 0.114 * b_cb;
                let cr = 0.299 * r_cr + 0.587 * g_cr;
                (cb * 255.0, cr * 255.0)
            })
        };
        Ok(LumaMap {
            y,
            chroma,
            y_linear,
            chroma_mid: (1u32 << (depth - 1)) as f32,
            chroma_scale: 1.0 / c_range,
        })
    }

    /// Writes the luma of `picture`'s rows and columns `0..width`, `0..height` into `out` (rows
    /// `stride` apart).
    fn write(&self, picture: &Picture, out: &mut [u8], stride: usize, width: usize, height: usize) {
        let wide = picture.depth > 8;
        let sample = |plane: usize, x: usize, y: usize| -> usize {
            let row = &picture.planes[plane][y * picture.strides[plane]..];
            if wide {
                usize::from(u16::from_ne_bytes([row[2 * x], row[2 * x + 1]]))
            } else {
                usize::from(row[x])
            }
        };
        let identity = !wide
            && self.chroma.is_none()
            && self.y.iter().enumerate().all(|(i, &v)| i == usize::from(v));
        for y in 0..height {
            let dst = &mut out[y * stride..y * stride + width];
            match self.chroma {
                None if identity => {
                    let row = &picture.planes[0][y * picture.strides[0]..];
                    dst.copy_from_slice(&row[..width]);
                }
                None if !wide => {
                    let row = &picture.planes[0][y * picture.strides[0]..];
                    for (d, &s) in dst.iter_mut().zip(&row[..width]) {
                        *d = self.y[usize::from(s)];
                    }
                }
                None => {
                    for (x, d) in dst.iter_mut().enumerate() {
                        *d = self.y[sample(0, x, y).min(self.y.len() - 1)];
                    }
                }
                Some((cb_k, cr_k)) => {
                    let (sx, sy) = picture.chroma_shift;
                    let cy = y >> sy;
                    for (x, d) in dst.iter_mut().enumerate() {
                        let luma = self.y_linear[sample(0, x, y).min(self.y_linear.len() - 1)];
                        let cb =
                            (sample(1, x >> sx, cy) as f32 - self.chroma_mid) * self.chroma_scale;
                        let cr =
                            (sample(2, x >> sx, cy) as f32 - self.chroma_mid) * self.chroma_scale;
                        *d = (luma + cb_k * cb + cr_k * cr).round().clamp(0.0, 255.0) as u8;
                    }
                }
            }
        }
    }
}

/// Decodes one coded item and hands its picture to `f`.
fn decode_coded(
    codec: Codec,
    data: &[u8],
    coded: &Coded,
    f: &mut dyn FnMut(&Picture) -> Result<()>,
) -> Result<()> {
    let format = codec.format();
    let bitstream = item_bytes(data, &coded.extents);
    let config = &data[coded.config.clone()];
    let check: &mut dyn FnMut(&Picture) -> Result<()> = &mut |picture| {
        if (picture.width, picture.height) != (coded.width as usize, coded.height as usize) {
            return Err(Error::invalid(
                format,
                format!(
                    "the container says {}x{}, the bitstream {}x{}",
                    coded.width, coded.height, picture.width, picture.height
                ),
            ));
        }
        f(picture)
    };
    match codec {
        #[cfg(feature = "avif")]
        Codec::Av1 => super::avif::decode(config, &bitstream, coded.width, coded.height, check),
        #[cfg(not(feature = "avif"))]
        Codec::Av1 => Err(Error::unsupported(
            "AVIF (this build leaves out the AV1 decoder: cargo feature `avif`)",
        )),
        #[cfg(feature = "heic")]
        Codec::Hevc => super::heic::decode(config, &bitstream, coded.width, coded.height, check),
        #[cfg(not(feature = "heic"))]
        Codec::Hevc => Err(Error::unsupported(
            "HEIC (this build leaves out the HEVC decoder: cargo feature `heic`)",
        )),
    }
}

impl HeifHeader {
    /// The size shown: the clean aperture's, else the image's.
    fn shown_size(&self) -> (u32, u32) {
        self.crop
            .map_or((self.image.width, self.image.height), |c| {
                (c.width, c.height)
            })
    }

    /// `plane` (the whole image's) cut to the clean aperture, where there is one.
    fn cropped(&self, plane: Vec<u8>) -> Vec<u8> {
        let Some(crop) = self.crop else {
            return plane;
        };
        let stride = self.image.width as usize;
        let (x, width) = (crop.x as usize, crop.width as usize);
        plane
            .chunks_exact(stride)
            .skip(crop.y as usize)
            .take(crop.height as usize)
            .flat_map(|row| &row[x..x + width])
            .copied()
            .collect()
    }

    /// An image's luma plane, `image.width * image.height`: tile by tile for a grid, layer by
    /// layer for an overlay.
    fn plane(&self, data: &[u8], image: &Image, cancel: &Cancel) -> Result<Vec<u8>> {
        let format = self.codec.format();
        let (width, height) = (image.width as usize, image.height as usize);
        let background = match &image.kind {
            Kind::Overlay { fill, .. } => *fill,
            _ => 0,
        };
        let mut out = vec![background; width * height];
        let mut one = |coded: &Coded, x0: usize, y0: usize| -> Result<()> {
            decode_coded(self.codec, data, coded, &mut |picture| {
                let signal = coded.signal.or(picture.signal).unwrap_or(Signal {
                    matrix: 6,
                    full_range: true,
                });
                let map = LumaMap::new(picture, signal, format)?;
                let w = picture.width.min(width - x0);
                let h = picture.height.min(height - y0);
                map.write(picture, &mut out[y0 * width + x0..], width, w, h);
                Ok(())
            })?;
            cancel.check()
        };
        match &image.kind {
            Kind::Coded(coded) => one(coded, 0, 0)?,
            Kind::Grid {
                columns,
                tile_width,
                tile_height,
                tiles,
            } => {
                for (i, tile) in tiles.iter().enumerate() {
                    let (column, row) = (i % *columns as usize, i / *columns as usize);
                    let (x0, y0) = (column * *tile_width as usize, row * *tile_height as usize);
                    // A tile wholly past the canvas (a grid larger than needed) is not shown.
                    if x0 < width && y0 < height {
                        one(tile, x0, y0)?;
                    }
                }
            }
            Kind::Overlay { layers, .. } => {
                for layer in layers {
                    let luma = self.plane(data, &layer.image, cancel)?;
                    let alpha = match &layer.alpha {
                        Some(a) => Some(self.plane(data, &strip_matrix(a), cancel)?),
                        None => None,
                    };
                    draw(&mut out, width, height, layer, &luma, alpha.as_deref());
                }
            }
        }
        Ok(out)
    }

    /// What [`HeifHeader::plane`] holds for `image`: its plane, and while each coded picture is
    /// mapped the codec's buffers; for an overlay, each layer's planes in turn on the canvas.
    fn estimate_plane(&self, heap: &mut Heap, image: &Image) {
        let pixels = |image: &Image| u64::from(image.width) * u64::from(image.height);
        heap.alloc(pixels(image));
        match &image.kind {
            Kind::Overlay { layers, .. } => {
                for layer in layers {
                    self.estimate_plane(heap, &layer.image);
                    if let Some(alpha) = &layer.alpha {
                        self.estimate_plane(heap, alpha);
                        heap.free(pixels(alpha));
                    }
                    heap.free(pixels(&layer.image));
                }
            }
            _ => {
                let codec = self.codec_bytes(image);
                heap.alloc(codec);
                heap.free(codec);
            }
        }
    }

    /// What one decode holds in the codec's buffers, in bytes: its picture (a grid's tile, or the
    /// whole image; every tile is the same size and sampling), laid out as the codec lays it
    /// out, and the codec's own state in its C heap: block and mode data, loop-filter lines,
    /// libde265's copy of a plane for its sample-adaptive offset, the decoder itself. That state
    /// is taken as 1.5 bytes a pixel, 128 bytes a column and 768 KiB, from the peak resident
    /// memory of converting the corpus's AVIF and HEIC files (`engine/tests/memory.rs`: up to
    /// about 1.3 bytes a pixel above the picture's size, and 300 to 400 KiB for the smallest
    /// files).
    fn codec_bytes(&self, image: &Image) -> u64 {
        let coded = match &image.kind {
            Kind::Coded(c) => c,
            Kind::Grid { tiles, .. } => &tiles[0],
            // Layers are decoded one after another (`estimate_plane`).
            Kind::Overlay { .. } => return 0,
        };
        let (w, h) = (coded.width as usize, coded.height as usize);
        let Sampling { chroma, depths } = coded.sampling;
        let picture = match self.codec {
            Codec::Av1 => PictureLayout::dav1d(w, h, depths.0, chroma),
            // The coded size is whole coding blocks (at least 8 pixels) over the shown one.
            Codec::Hevc => PictureLayout::libde265(
                w.next_multiple_of(8),
                h.next_multiple_of(8),
                depths,
                chroma,
            ),
        };
        let (w, h) = (w as u64, h as u64);
        picture.total() as u64 + w * h * 3 / 2 + 128 * w + (768 << 10)
    }
}

impl Source for HeifHeader {
    fn geometry(&self) -> Geometry {
        let (width, height) = self.shown_size();
        Geometry {
            width,
            height,
            orientation: self.orientation,
        }
    }

    fn decode(
        &self,
        data: &[u8],
        _: &Limits,
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        let mut luma_plane = self.cropped(self.plane(data, &self.image, cancel)?);
        let alpha = match &self.alpha {
            None => None,
            Some(image) => {
                // Alpha is its item's Y, full range unless the item says otherwise, never a
                // colour matrix.
                let alpha = self.cropped(self.plane(data, &strip_matrix(image), cancel)?);
                if flatten_alpha {
                    for (y, &a) in luma_plane.iter_mut().zip(&alpha) {
                        *y = luma::over_white(*y, a);
                    }
                    None
                } else {
                    Some(alpha)
                }
            }
        };
        let (width, height) = self.shown_size();
        Ok(GrayImage {
            width: width as usize,
            height: height as usize,
            luma: luma_plane,
            alpha,
        })
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let decoded = u64::from(self.image.width) * u64::from(self.image.height);
        let (width, height) = self.shown_size();
        let shown = u64::from(width) * u64::from(height);
        // One plane: decoded whole, with the codec's buffers (C heap) live while its picture is
        // mapped, then cropped into its own buffer where there is a crop.
        let plane = |heap: &mut Heap, image: &Image| {
            self.estimate_plane(heap, image);
            if self.crop.is_some() {
                heap.alloc(shown);
                heap.free(decoded);
            }
        };
        plane(heap, &self.image);
        let Some(alpha) = &self.alpha else {
            return false;
        };
        plane(heap, alpha);
        if flatten_alpha {
            heap.free(shown);
        }
        !flatten_alpha
    }
}

/// Draws `layer` (its `luma`, and `alpha` where it has one) on the `width` x `height` `canvas`
/// at its offset, cutting what falls outside; with alpha, `a * layer + (1 - a) * canvas`,
/// rounded, as libheif composes an overlay's RGB.
fn draw(
    canvas: &mut [u8],
    width: usize,
    height: usize,
    layer: &Layer,
    luma: &[u8],
    alpha: Option<&[u8]>,
) {
    let (lw, lh) = (layer.image.width as i64, layer.image.height as i64);
    let x0 = layer.x.clamp(0, width as i64);
    let x1 = (layer.x + lw).clamp(0, width as i64);
    let y0 = layer.y.clamp(0, height as i64);
    let y1 = (layer.y + lh).clamp(0, height as i64);
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let (n, sx) = ((x1 - x0) as usize, (x0 - layer.x) as usize);
    for y in y0..y1 {
        let src = (y - layer.y) as usize * lw as usize + sx;
        let dst = &mut canvas[y as usize * width + x0 as usize..][..n];
        let row = &luma[src..src + n];
        match alpha {
            None => dst.copy_from_slice(row),
            Some(alpha) => {
                for ((d, &l), &a) in dst.iter_mut().zip(row).zip(&alpha[src..src + n]) {
                    let (l, a, d0) = (u32::from(l), u32::from(a), u32::from(*d));
                    *d = ((l * a + d0 * (255 - a) + 127) / 255) as u8;
                }
            }
        }
    }
}

/// An alpha image: its samples read as monochrome (only Y counts).
fn strip_matrix(image: &Image) -> Image {
    let strip = |c: &Coded| Coded {
        signal: Some(Signal {
            matrix: 2,
            full_range: c.signal.is_none_or(|s| s.full_range),
        }),
        ..c.clone()
    };
    Image {
        width: image.width,
        height: image.height,
        kind: match &image.kind {
            Kind::Coded(c) => Kind::Coded(strip(c)),
            Kind::Grid {
                columns,
                tile_width,
                tile_height,
                tiles,
            } => Kind::Grid {
                columns: *columns,
                tile_width: *tile_width,
                tile_height: *tile_height,
                tiles: tiles.iter().map(strip).collect(),
            },
            // An alpha item is coded or a grid; an overlay's layers carry their own alpha.
            overlay @ Kind::Overlay { .. } => overlay.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crop(fractions: [(i64, i64); 4], width: u32, height: u32) -> Result<Crop> {
        CleanAperture(fractions).crop(width, height, Format::Heic)
    }

    #[test]
    fn a_centred_clean_aperture_crops_as_libheif_rounds() {
        // 64 wide, 29 shown: left = 63/2 - 28/2 = 17.5, truncated to 17; right = 17 + 28 = 45.
        let c = crop([(29, 1), (100, 1), (0, 1), (0, 1)], 64, 100).unwrap();
        assert_eq!(
            c,
            Crop {
                x: 17,
                y: 0,
                width: 29,
                height: 100
            }
        );
    }

    #[test]
    fn an_offset_clean_aperture_moves_and_is_clamped_to_the_image() {
        // Centre moved 10.5 px right of the middle of a 100x50 image, 40x20 shown:
        // left = 10.5 + 49.5 - 19.5 = 40.5 -> 40, right = round(39 + 40) = 79;
        // top = -3 + 24.5 - 9.5 = 12, bottom = 31.
        let c = crop([(40, 1), (20, 1), (21, 2), (-3, 1)], 100, 50).unwrap();
        assert_eq!(
            c,
            Crop {
                x: 40,
                y: 12,
                width: 40,
                height: 20
            }
        );
        // An aperture reaching past the right edge is cut at it.
        let c = crop([(40, 1), (20, 1), (50, 1), (0, 1)], 100, 50).unwrap();
        assert_eq!((c.x, c.width), (80, 20));
    }

    #[test]
    fn an_overlay_layer_is_cut_to_the_canvas_and_blended_by_its_alpha() {
        let mut canvas = vec![10u8; 4 * 3];
        let layer = Layer {
            image: Image {
                width: 2,
                height: 2,
                kind: Kind::Overlay {
                    fill: 0,
                    layers: Vec::new(),
                },
            },
            alpha: None,
            x: -1,
            y: 1,
        };
        // Only the layer's right column lands, on the canvas's first column, rows 1 and 2:
        // 101 at full alpha; (103 * 128 + 10 * 127 + 127) / 255 = 57.
        draw(
            &mut canvas,
            4,
            3,
            &layer,
            &[100, 101, 102, 103],
            Some(&[0, 255, 0, 128]),
        );
        assert_eq!(canvas, [10, 10, 10, 10, 101, 10, 10, 10, 57, 10, 10, 10]);
        // Past the canvas: nothing drawn.
        let away = Layer { x: 4, ..layer };
        draw(&mut canvas, 4, 3, &away, &[0; 4], None);
        assert_eq!(canvas, [10, 10, 10, 10, 101, 10, 10, 10, 57, 10, 10, 10]);
    }

    #[test]
    fn a_clean_aperture_outside_the_image_or_with_a_zero_denominator_is_invalid() {
        for fractions in [
            [(10, 1), (10, 1), (500, 1), (0, 1)],
            [(10, 0), (10, 1), (0, 1), (0, 1)],
            [(0, 1), (10, 1), (0, 1), (0, 1)],
        ] {
            let err = crop(fractions, 100, 50).unwrap_err();
            assert_eq!(
                err.kind(),
                crate::ErrorKind::Invalid,
                "{fractions:?}: {err}"
            );
        }
    }
}
