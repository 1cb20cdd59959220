//! ICO sources: our own reading of the icon directory, then the entry Pillow shows (the largest)
//! through the PNG or BMP reader.
//!
//! Pillow's choice, followed here: the entries are ordered by colour depth, then stably by area
//! with the largest first, and the first is shown: the largest icon, and among equally large
//! ones the lowest colour depth. Its size is the payload's own, whatever the directory says.

use std::ops::Range;

use super::bmp::{self, BmpHeader};
use super::png::{self, PngHeader};
use super::{Depth, Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::pixels::GrayImage;
use crate::sniff::PNG_SIGNATURE;
use crate::{Cancel, Format, Limits};

/// The chosen entry's payload, read, and where it is in the file.
pub(crate) struct IcoHeader {
    payload: Payload,
    range: Range<usize>,
}

enum Payload {
    Png(PngHeader),
    Bmp(BmpHeader),
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Ico, reason)
}

/// One directory entry: what Pillow orders by, and where the payload is.
struct Entry {
    area: u32,
    depth: u32,
    offset: usize,
    size: usize,
}

pub(crate) fn read_header(data: &[u8], limits: &Limits, depth: Depth) -> Result<IcoHeader> {
    let count = data
        .get(4..6)
        .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
        .ok_or_else(|| invalid("truncated in the icon directory"))?;
    if count == 0 {
        return Err(invalid("the icon directory lists no image"));
    }
    let mut entries = Vec::with_capacity(count.min(data.len() / 16));
    for i in 0..count {
        let e = data.get(6 + 16 * i..6 + 16 * (i + 1)).ok_or_else(|| {
            invalid(format!(
                "truncated: the directory lists {count} entries, the file ends in entry {i}"
            ))
        })?;
        let side = |b: u8| if b == 0 { 256 } else { u32::from(b) };
        let colors = u32::from(e[2]);
        let bits = u32::from(u16::from_le_bytes([e[6], e[7]]));
        let depth = match (bits, colors) {
            (0, 0) => 256,
            (0, c) => u32::BITS - (c - 1).leading_zeros(), // ceil(log2(c))
            (b, _) => b,
        };
        entries.push(Entry {
            area: side(e[0]) * side(e[1]),
            depth,
            size: u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as usize,
            offset: u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as usize,
        });
    }
    entries.sort_by_key(|e| e.depth);
    entries.sort_by_key(|e| std::cmp::Reverse(e.area));
    let chosen = &entries[0];
    let end = chosen.offset.saturating_add(chosen.size);
    if end > data.len() {
        return Err(invalid(format!(
            "truncated: the largest icon's {} bytes at offset {} end past the file ({} bytes)",
            chosen.size,
            chosen.offset,
            data.len()
        )));
    }
    let range = chosen.offset..end;
    let entry = &data[range.clone()];
    let payload = if entry.starts_with(PNG_SIGNATURE) {
        Payload::Png(png::read_header(entry, limits, depth)?)
    } else {
        Payload::Bmp(bmp::read_icon_dib(entry, limits)?)
    };
    Ok(IcoHeader { payload, range })
}

impl IcoHeader {
    fn source(&self) -> &dyn Source {
        match &self.payload {
            Payload::Png(png) => png,
            Payload::Bmp(bmp) => bmp,
        }
    }
}

impl Source for IcoHeader {
    fn geometry(&self) -> Geometry {
        self.source().geometry()
    }

    fn decode(
        &self,
        data: &[u8],
        limits: &Limits,
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        self.source()
            .decode(&data[self.range.clone()], limits, cancel, flatten_alpha)
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        self.source().estimate(heap, flatten_alpha)
    }
}
