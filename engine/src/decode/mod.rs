//! The pixel path's input formats, one module each, behind one interface: [`read_header`] reads a
//! format's header (checking every limit, allocating nothing for pixels) into a [`Source`], which
//! then decodes to 8-bit luma (and alpha) and tells the memory estimate what it will hold.
//!
//! JPEG is not here: it has its own fast special case (the coefficient path, and a luma-only
//! decoder on the pixel path) in `crate::jpeg`. Every other format comes through this module, so a
//! new one is a file here, a variant of [`Format`], a signature in `crate::sniff` and a line in
//! [`read_header`].

#[cfg(feature = "avif")]
pub(crate) mod avif;
pub(crate) mod bmp;
pub(crate) mod codec_heap;
pub(crate) mod gif;
#[cfg(feature = "heic")]
pub(crate) mod heic;
pub(crate) mod heif;
pub(crate) mod ico;
pub(crate) mod png;
pub(crate) mod tiff;
pub(crate) mod webp;

use crate::error::Result;
use crate::estimate::Heap;
use crate::pixels::GrayImage;
use crate::{Cancel, Format, Limits, Orientation};

/// What a header says: the stored size and the orientation the image displays with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub width: u32,
    pub height: u32,
    pub orientation: Orientation,
}

impl Geometry {
    /// A size that displays as stored (formats without an orientation).
    pub fn stored(width: u32, height: u32) -> Geometry {
        Geometry {
            width,
            height,
            orientation: Orientation::NORMAL,
        }
    }
}

/// How deep [`read_header`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    /// Everything a conversion checks before decoding, the format library's own header
    /// reading included (what `probe` and `convert` do).
    Full,
    /// Only what the memory estimate needs: the layout, by our own parsing, without handing the
    /// file to a library that may copy it (the estimate runs on every job before admission).
    Layout,
}

/// One input, its header read and its limits checked: ready to decode.
pub(crate) trait Source {
    fn geometry(&self) -> Geometry;

    /// Decodes to 8-bit luma at the stored size (not yet turned upright), with alpha as a second
    /// plane unless `flatten_alpha` composites it over white. Checks `cancel` where the decoder
    /// lets it (between rows or frames; a library that cannot be stopped inside its call is
    /// checked on its way out by the caller).
    fn decode(
        &self,
        data: &[u8],
        limits: &Limits,
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage>;

    /// Replays the decode's large allocations on `heap`, in the order `decode` makes them, and
    /// leaves live only the planes it returns: the luma plane (`width * height` bytes) and, when
    /// the return value is true, an alpha plane of the same size.
    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool;
}

/// Reads the header of a non-JPEG `format` (as [`crate::sniff`] named it) and checks `limits`
/// against it, allocating nothing for pixels.
pub(crate) fn read_header(
    format: Format,
    data: &[u8],
    limits: &Limits,
    depth: Depth,
) -> Result<Box<dyn Source>> {
    Ok(match format {
        Format::Png => Box::new(png::read_header(data, limits, depth)?),
        Format::WebP => Box::new(webp::read_header(data, limits)?),
        Format::Gif => Box::new(gif::read_header(data, limits)?),
        Format::Bmp => Box::new(bmp::read_header(data, limits)?),
        Format::Ico => Box::new(ico::read_header(data, limits, depth)?),
        Format::Tiff => Box::new(tiff::read_header(data, limits)?),
        Format::Avif | Format::Heic => Box::new(heif::read_header(format, data, limits)?),
        Format::Jpeg => {
            return Err(crate::Error::Internal(
                "a JPEG reached the pixel formats' header reader".into(),
            ));
        }
    })
}
