//! GIF sources: the first frame, as Pillow shows it. The `gif` crate decodes the frame's LZW
//! data to palette indices (de-interlaced); the canvas around it, its transparency and its
//! palette are ours.
//!
//! Pillow's rules for the first frame, followed here: the image is the logical screen, grown to
//! hold the first frame where the frame reaches past it; the area outside the frame is the
//! frame's transparent index if it has one, else index 0; the frame's own palette wins over the
//! global one; an index past the palette is black; a GIF without any palette is gray.

use std::num::NonZeroU64;

use super::{Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::pixels::{GrayImage, GrayPalette};
use crate::{Cancel, Format, Limits};

/// What the blocks before the first frame's pixel data say.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GifHeader {
    /// The image: the logical screen, grown to hold the first frame.
    width: u32,
    height: u32,
    /// The first frame's rectangle: left, top, width, height.
    frame: [u32; 4],
    /// Whether the first frame's graphic control extension names a transparent index.
    transparent: bool,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Gif, reason)
}

fn u16_at(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 2)
        .map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))
}

/// Walks the blocks up to the first image descriptor, allocating nothing.
pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<GifHeader> {
    let truncated = || invalid("truncated before the first frame");
    let screen_w = u16_at(data, 6).ok_or_else(truncated)?;
    let screen_h = u16_at(data, 8).ok_or_else(truncated)?;
    let flags = *data.get(10).ok_or_else(truncated)?;
    let mut pos = 13;
    let mut transparent = false;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 7) + 1);
    }
    loop {
        match *data.get(pos).ok_or_else(truncated)? {
            0x21 => {
                // An extension: its label, then sub-blocks up to an empty one. A graphic control
                // extension's first sub-block has the transparency flag in its first byte.
                if data.get(pos + 1) == Some(&0xF9) {
                    transparent = data.get(pos + 3).ok_or_else(truncated)? & 1 != 0;
                }
                pos += 2;
                loop {
                    let len = usize::from(*data.get(pos).ok_or_else(truncated)?);
                    pos += 1 + len;
                    if len == 0 {
                        break;
                    }
                }
            }
            0x2C => {
                let field = |at| u16_at(data, pos + at).ok_or_else(truncated);
                let frame = [field(1)?, field(3)?, field(5)?, field(7)?];
                let width = screen_w.max(frame[0] + frame[2]);
                let height = screen_h.max(frame[1] + frame[3]);
                if width == 0 || height == 0 {
                    return Err(invalid(format!("the image is {width}x{height} pixels")));
                }
                limits.check_dimensions(width, height)?;
                return Ok(GifHeader {
                    width,
                    height,
                    frame,
                    transparent,
                });
            }
            0x3B => return Err(invalid("the file ends (trailer) before any frame")),
            other => {
                return Err(invalid(format!(
                    "expected an extension (0x21) or an image (0x2C) at byte {pos}, found \
                     0x{other:02X}"
                )));
            }
        }
    }
}

fn gif_error(e: gif::DecodingError) -> Error {
    match e {
        gif::DecodingError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            invalid("truncated inside the first frame")
        }
        e => invalid(e.to_string()),
    }
}

impl Source for GifHeader {
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
        let [left, top, frame_w, frame_h] = self.frame.map(|v| v as usize);
        let mut options = gif::DecodeOptions::new();
        options.set_color_output(gif::ColorOutput::Indexed);
        // The frame's indices, one byte a pixel, are within the image checked against the limits.
        let frame_bytes = (frame_w * frame_h).max(1) as u64;
        options.set_memory_limit(gif::MemoryLimit::Bytes(
            NonZeroU64::new(frame_bytes).expect("at least 1"),
        ));
        // The decoder's reads are from memory: a slice is its own buffer.
        let mut decoder = options.read_info(data).map_err(gif_error)?;
        let global = decoder.global_palette().map(<[u8]>::to_vec);
        let frame = decoder
            .next_frame_info()
            .map_err(gif_error)?
            .ok_or_else(|| invalid("no frame"))?;
        let transparent = frame.transparent;
        let local = frame.palette.clone();
        if decoder.buffer_size() != frame_w * frame_h {
            return Err(invalid(format!(
                "the first frame is {} bytes to the decoder, {frame_w}x{frame_h} to its descriptor",
                decoder.buffer_size()
            )));
        }
        let mut canvas = vec![transparent.unwrap_or(0); width * height];
        if frame_w > 0 && frame_h > 0 {
            if (left, top, frame_w, frame_h) == (0, 0, width, height) {
                decoder.read_into_buffer(&mut canvas).map_err(gif_error)?;
            } else {
                let mut pixels = vec![0u8; frame_w * frame_h];
                decoder.read_into_buffer(&mut pixels).map_err(gif_error)?;
                for (row, src) in pixels.chunks_exact(frame_w).enumerate() {
                    let y = top + row;
                    let start = y * width + left;
                    canvas[start..start + frame_w].copy_from_slice(src);
                }
            }
        }
        cancel.check()?;
        let entries = local.or(global);
        let palette = GrayPalette::new(
            (0..=255u8).map(|i| {
                let [r, g, b] = match &entries {
                    Some(rgb) => rgb
                        .get(usize::from(i) * 3..usize::from(i) * 3 + 3)
                        .map_or([0; 3], |c| [c[0], c[1], c[2]]),
                    None => [i; 3],
                };
                [r, g, b, if Some(i) == transparent { 0 } else { 255 }]
            }),
            [0, 0, 0, 255],
        );
        Ok(palette.planes(&canvas, width, height, flatten_alpha))
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let pixels = u64::from(self.width) * u64::from(self.height);
        let [left, top, frame_w, frame_h] = self.frame.map(u64::from);
        // The canvas, the frame apart from it unless it is the whole canvas, then the planes.
        heap.alloc(pixels);
        let frame = if (left, top, frame_w, frame_h)
            == (0, 0, u64::from(self.width), u64::from(self.height))
        {
            0
        } else {
            frame_w * frame_h
        };
        heap.alloc(frame);
        let alpha = self.transparent && !flatten_alpha;
        heap.alloc(if alpha { 2 * pixels } else { pixels });
        heap.free(frame);
        heap.free(pixels);
        alpha
    }
}
