//! Walking a JPEG's marker segments and reading the frame header.
//!
//! Both paths start here: the limits are checked against the frame header before anything is
//! allocated for pixels or coefficients, and the colour transform is decided the way libjpeg
//! decides it (JFIF, then Adobe APP14, then component ids).

use crate::error::{Error, Result};
use crate::{Format, Limits, Orientation};

pub(crate) const SOI: u8 = 0xD8;
pub(crate) const EOI: u8 = 0xD9;
pub(crate) const SOS: u8 = 0xDA;
pub(crate) const DQT: u8 = 0xDB;
pub(crate) const DHT: u8 = 0xC4;
pub(crate) const DRI: u8 = 0xDD;
pub(crate) const DNL: u8 = 0xDC;
pub(crate) const APP1: u8 = 0xE1;
pub(crate) const APP14: u8 = 0xEE;

pub(crate) fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Jpeg, reason)
}

/// How the frame's samples are coded (from the SOF marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Coding {
    /// SOF0 and SOF1: sequential, Huffman.
    Sequential,
    /// SOF2: progressive, Huffman.
    Progressive,
}

/// What the components hold, decided as libjpeg decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ColorKind {
    Gray,
    YCbCr,
    Rgb,
    /// Adobe CMYK (stored inverted: 0 is full ink), Adobe transform 0 or no Adobe marker.
    Cmyk,
    /// Adobe transform 2: YCbCr for the first three components, K as is.
    Ycck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Component {
    pub id: u8,
    pub h: u8,
    pub v: u8,
    pub quant_table: u8,
}

/// The frame header (SOF) and what the segments before the first scan said about it.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    pub coding: Coding,
    pub width: u32,
    pub height: u32,
    pub components: Vec<Component>,
    pub color: ColorKind,
    pub orientation: Orientation,
    /// MCUs per restart interval as a DRI before the first scan sets it (0: none), for the
    /// memory estimate; the decoder follows every DRI as it comes.
    pub restart_interval: u16,
}

impl Frame {
    pub fn h_max(&self) -> u8 {
        self.components.iter().map(|c| c.h).max().unwrap_or(1)
    }

    pub fn v_max(&self) -> u8 {
        self.components.iter().map(|c| c.v).max().unwrap_or(1)
    }

    /// MCU columns and rows of an interleaved scan.
    pub fn mcus(&self) -> (usize, usize) {
        let (mw, mh) = (8 * usize::from(self.h_max()), 8 * usize::from(self.v_max()));
        (
            (self.width as usize).div_ceil(mw),
            (self.height as usize).div_ceil(mh),
        )
    }

    /// The luma plane's size in blocks, padded to whole MCUs.
    pub fn padded_luma_blocks(&self) -> (usize, usize) {
        let (mx, my) = self.mcus();
        let luma = &self.components[0];
        (mx * usize::from(luma.h), my * usize::from(luma.v))
    }

    /// Blocks across and down that hold component `c`'s samples (without MCU padding).
    pub fn component_blocks(&self, c: usize) -> (usize, usize) {
        let comp = &self.components[c];
        let w = (self.width as usize * usize::from(comp.h)).div_ceil(usize::from(self.h_max()));
        let h = (self.height as usize * usize::from(comp.v)).div_ceil(usize::from(self.v_max()));
        (w.div_ceil(8), h.div_ceil(8))
    }
}

/// A cursor over the marker segments of one JPEG stream.
pub(crate) struct Segments<'a> {
    pub data: &'a [u8],
    pub pos: usize,
}

impl<'a> Segments<'a> {
    /// Starts after SOI.
    pub fn new(data: &'a [u8]) -> Result<Self> {
        if !data.starts_with(&[0xFF, SOI]) {
            return Err(invalid("expected the start-of-image marker FF D8"));
        }
        Ok(Segments { data, pos: 2 })
    }

    /// The next marker code. Fill bytes (FF FF ...) before a marker are allowed, as the standard
    /// says; any other byte where a marker must be is an error.
    pub fn next_marker(&mut self) -> Result<u8> {
        match self.data.get(self.pos) {
            Some(0xFF) => {}
            Some(&b) => {
                return Err(invalid(format!(
                    "expected a marker at byte {}, found 0x{b:02X}",
                    self.pos
                )));
            }
            None => {
                return Err(invalid(format!(
                    "truncated: the file ends at byte {} where a marker was expected",
                    self.pos
                )));
            }
        }
        while self.data.get(self.pos) == Some(&0xFF) {
            self.pos += 1;
        }
        let code = *self
            .data
            .get(self.pos)
            .ok_or_else(|| invalid("truncated: the file ends inside a marker"))?;
        self.pos += 1;
        Ok(code)
    }

    /// The payload of the segment whose marker was just read (without its two length bytes).
    pub fn payload(&mut self) -> Result<&'a [u8]> {
        let at = self.pos;
        let len = match self.data.get(at..at + 2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => {
                return Err(invalid(format!(
                    "truncated: the file ends at byte {at} inside a segment length"
                )));
            }
        };
        if len < 2 {
            return Err(invalid(format!(
                "segment length at byte {at} is {len}, expected at least 2"
            )));
        }
        let payload = self.data.get(at + 2..at + len).ok_or_else(|| {
            invalid(format!(
                "truncated: a segment at byte {at} declares {len} bytes, only {} remain",
                self.data.len() - at
            ))
        })?;
        self.pos = at + len;
        Ok(payload)
    }
}

/// Reads every segment up to the first scan: the frame, orientation and colour kind.
/// Checks the limits on the declared size before returning.
pub(crate) fn read_frame(data: &[u8], limits: &Limits) -> Result<Frame> {
    let mut segments = Segments::new(data)?;
    let (mut sof, mut jfif, mut adobe, mut orientation) = (None, false, None, None);
    let mut restart_interval = 0;
    loop {
        let marker = segments.next_marker()?;
        match marker {
            SOS => break,
            EOI => return Err(invalid("the image ends (EOI) before any scan")),
            0xD0..=0xD7 | 0x01 => continue, // parameterless markers
            _ => {}
        }
        let payload = segments.payload()?;
        match marker {
            0xC0..=0xC2 => {
                if sof.is_some() {
                    return Err(invalid("a second frame header (SOF) before the first scan"));
                }
                sof = Some((marker, payload));
            }
            0xC3 => return Err(Error::unsupported("lossless JPEG (SOF3)")),
            0xC5..=0xC7 => {
                return Err(Error::unsupported(format!(
                    "hierarchical JPEG (SOF{})",
                    marker - 0xC0
                )));
            }
            0xC9..=0xCB | 0xCD..=0xCF => {
                return Err(Error::unsupported(format!(
                    "arithmetic-coded JPEG (SOF{})",
                    marker - 0xC0
                )));
            }
            0xE0 if payload.starts_with(b"JFIF\0") => jfif = true,
            APP1 if orientation.is_none() && payload.starts_with(b"Exif\0") => {
                orientation = Some(Orientation::from_exif(&payload[6.min(payload.len())..]));
            }
            APP14 if payload.starts_with(b"Adobe") && payload.len() >= 12 => {
                adobe = Some(payload[11])
            }
            DRI if payload.len() >= 2 => {
                restart_interval = u16::from_be_bytes([payload[0], payload[1]]);
            }
            _ => {}
        }
    }
    let (marker, sof) =
        sof.ok_or_else(|| invalid("a scan (SOS) comes before any frame header (SOF)"))?;
    let mut frame = parse_sof(marker, sof, limits)?;
    frame.orientation = orientation.unwrap_or_default();
    frame.restart_interval = restart_interval;
    frame.color = color_kind(&frame.components, jfif, adobe)?;
    Ok(frame)
}

fn parse_sof(marker: u8, p: &[u8], limits: &Limits) -> Result<Frame> {
    if p.len() < 6 {
        return Err(invalid(format!(
            "frame header is {} bytes, expected at least 6",
            p.len()
        )));
    }
    let precision = p[0];
    let height = u32::from(u16::from_be_bytes([p[1], p[2]]));
    let width = u32::from(u16::from_be_bytes([p[3], p[4]]));
    let count = usize::from(p[5]);
    if precision != 8 {
        return Err(Error::unsupported(format!(
            "{precision}-bit JPEG samples (only 8-bit)"
        )));
    }
    if height == 0 {
        return Err(Error::unsupported(
            "a JPEG whose height is defined later by a DNL marker",
        ));
    }
    if width == 0 {
        return Err(invalid("the frame header declares a width of 0"));
    }
    limits.check_dimensions(width, height)?;
    if !matches!(count, 1 | 3 | 4) {
        return Err(Error::unsupported(format!(
            "JPEG with {count} components (expected 1, 3 or 4)"
        )));
    }
    if p.len() < 6 + 3 * count {
        return Err(invalid(format!(
            "frame header of {count} components is {} bytes, expected {}",
            p.len(),
            6 + 3 * count
        )));
    }
    let mut components = Vec::with_capacity(count);
    for c in p[6..6 + 3 * count].chunks_exact(3) {
        let (h, v, quant_table) = (c[1] >> 4, c[1] & 15, c[2]);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) {
            return Err(invalid(format!(
                "component {} has sampling factors {h}x{v}, expected 1 to 4",
                c[0]
            )));
        }
        if quant_table > 3 {
            return Err(invalid(format!(
                "component {} uses quantization table {quant_table}, expected 0 to 3",
                c[0]
            )));
        }
        if components.iter().any(|o: &Component| o.id == c[0]) {
            return Err(invalid(format!("two components share the id {}", c[0])));
        }
        components.push(Component {
            id: c[0],
            h,
            v,
            quant_table,
        });
    }
    let coding = if marker == 0xC2 {
        Coding::Progressive
    } else {
        Coding::Sequential
    };
    Ok(Frame {
        coding,
        width,
        height,
        components,
        color: ColorKind::Gray,
        orientation: Orientation::NORMAL,
        restart_interval: 0,
    })
}

fn color_kind(components: &[Component], jfif: bool, adobe: Option<u8>) -> Result<ColorKind> {
    Ok(match components.len() {
        1 => ColorKind::Gray,
        3 if jfif => ColorKind::YCbCr,
        3 => match adobe {
            Some(0) => ColorKind::Rgb,
            Some(_) => ColorKind::YCbCr,
            None if components.iter().map(|c| c.id).eq(*b"RGB") => ColorKind::Rgb,
            None => ColorKind::YCbCr,
        },
        4 => match adobe {
            Some(0) | None => ColorKind::Cmyk,
            Some(_) => ColorKind::Ycck,
        },
        n => return Err(Error::unsupported(format!("JPEG with {n} components"))),
    })
}
