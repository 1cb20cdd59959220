//! WebP sources through libwebp (the `libwebp-sys` crate's static build of the vendored C
//! sources: no system library, nothing fetched at build time).
//!
//! Every WebP is decoded to RGB (RGBA with alpha or animation) into our own buffer, then luma
//! (alpha kept or composited over white). An animation shows its first frame as Pillow shows it
//! (through libwebp's `WebPAnimDecoder`): on a transparent canvas at the frame's offset.
//!
//! Why not lossy WebP's Y plane straight from the codec: VP8's Y is BT.601 *limited* range, and
//! the luma Pillow computes comes from libwebp's RGB, whose channels are each rounded and clipped
//! after fancy chroma upsampling. Mapping Y through libwebp's own arithmetic at neutral chroma
//! (`((y * 19077 >> 8) - 1160) >> 6`) is exact for gray and equal up to that rounding and
//! clipping for colour, and measured 0.06 to 1.4 dB under the conformance bound (Pillow's own
//! JPEG less 0.5 dB) on 3 of the 8 `formats-bench/` photos (docs/formats.md). The honest
//! conversion is libwebp's RGB.
//!
//! The EXIF chunk's orientation is applied, as for JPEG.

use std::ffi::c_int;

use libwebp_sys as webp;

use super::{Geometry, Source};
use crate::error::{Error, Result};
use crate::estimate::Heap;
use crate::pixels::{GrayImage, Layout};
use crate::{Cancel, Format, Limits, Orientation};

/// What a WebP's RIFF chunks and bitstream header say, read without allocating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WebPHeader {
    width: u32,
    height: u32,
    orientation: Orientation,
    alpha: bool,
    animated: bool,
    /// Lossless (VP8L) bitstream (the still image's; an animation's frames may mix).
    lossless: bool,
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::WebP, reason)
}

fn status_error(status: webp::VP8StatusCode) -> Error {
    use webp::VP8StatusCode as S;
    match status {
        S::VP8_STATUS_NOT_ENOUGH_DATA => invalid("truncated: libwebp ran out of data"),
        S::VP8_STATUS_UNSUPPORTED_FEATURE => Error::unsupported(format!(
            "a WebP feature libwebp does not decode ({status:?})"
        )),
        S::VP8_STATUS_OUT_OF_MEMORY => Error::Internal("libwebp ran out of memory".into()),
        other => invalid(format!("libwebp: {other:?}")),
    }
}

/// The RIFF chunks after the `WEBP` form type, as four-cc and payload, up to where the bytes run
/// out (libwebp judges truncation).
fn chunks(data: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut pos = 12usize;
    std::iter::from_fn(move || {
        let head = data.get(pos..pos.checked_add(8)?)?;
        let kind: [u8; 4] = head[..4].try_into().expect("4 bytes");
        let len = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes")) as usize;
        let body = data.get(pos + 8..(pos + 8).checked_add(len)?)?;
        pos += 8 + len + (len & 1);
        Some((kind, body))
    })
}

pub(crate) fn read_header(data: &[u8], limits: &Limits) -> Result<WebPHeader> {
    let mut features = std::mem::MaybeUninit::<webp::WebPBitstreamFeatures>::zeroed();
    // SAFETY: `data` is a valid slice for its length; libwebp writes `features` and reads
    // nothing past `data.len()` (it allocates nothing for this call).
    let status = unsafe { webp::WebPGetFeatures(data.as_ptr(), data.len(), features.as_mut_ptr()) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(status_error(status));
    }
    // SAFETY: WebPGetFeatures returned OK, so it filled every field.
    let features = unsafe { features.assume_init() };
    let (width, height) = (features.width as u32, features.height as u32);
    if features.width <= 0 || features.height <= 0 {
        return Err(invalid(format!(
            "the header declares {width}x{height} pixels"
        )));
    }
    limits.check_dimensions(width, height)?;
    let mut orientation = Orientation::NORMAL;
    for (kind, body) in chunks(data) {
        if &kind == b"EXIF" {
            // Some writers keep the JPEG APP1 prefix; Pillow strips it too.
            let tiff = body.strip_prefix(b"Exif\0\0").unwrap_or(body);
            orientation = Orientation::from_exif(tiff);
        }
    }
    Ok(WebPHeader {
        width,
        height,
        orientation,
        alpha: features.has_alpha != 0,
        animated: features.has_animation != 0,
        lossless: features.format == 2,
    })
}

impl WebPHeader {
    /// Whether the decode keeps four channels: alpha in the file, or an animation's canvas.
    fn layout(&self) -> Layout {
        if self.alpha || self.animated {
            Layout::Rgba
        } else {
            Layout::Rgb
        }
    }
}

/// libwebp's decoder settings with every default, for `output` to be filled in.
fn config() -> Result<webp::WebPDecoderConfig> {
    let mut config = std::mem::MaybeUninit::<webp::WebPDecoderConfig>::zeroed();
    // SAFETY: WebPInitDecoderConfig initialises the whole struct (and checks the ABI version).
    if !unsafe { webp::WebPInitDecoderConfig(config.as_mut_ptr()) } {
        return Err(Error::Internal(
            "libwebp's decoder ABI does not match".into(),
        ));
    }
    // SAFETY: initialised just above.
    Ok(unsafe { config.assume_init() })
}

/// Decodes `bitstream` into memory the caller owns, as `config.output` describes it.
///
/// # Safety
/// `config.output` must describe external buffers that are valid for writes of the sizes it
/// names, and live until this returns.
unsafe fn decode_into(bitstream: &[u8], config: &mut webp::WebPDecoderConfig) -> Result<()> {
    config.output.is_external_memory = 1;
    // SAFETY: the caller vouches for the output buffers; `bitstream` is a valid slice.
    let status = unsafe { webp::WebPDecode(bitstream.as_ptr(), bitstream.len(), config) };
    // SAFETY: with external memory this frees only what libwebp allocated itself (nothing
    // after a finished decode); it never frees the caller's buffers.
    unsafe { webp::WebPFreeDecBuffer(&mut config.output) };
    if status != webp::VP8StatusCode::VP8_STATUS_OK {
        return Err(status_error(status));
    }
    Ok(())
}

/// The first frame of an animation: its bitstream (the frame's VP8/VP8L and ALPH chunks), its
/// offset on the canvas and size.
struct FirstFrame<'a> {
    bitstream: &'a [u8],
    x: usize,
    y: usize,
    width: usize,
    height: usize,
}

fn first_frame(data: &[u8]) -> Result<FirstFrame<'_>> {
    let input = webp::WebPData {
        bytes: data.as_ptr(),
        size: data.len(),
    };
    // SAFETY: `input` points into `data`, which outlives the demuxer (deleted below); a null
    // state pointer is allowed.
    let demux = unsafe {
        webp::WebPDemuxInternal(
            &input,
            0,
            std::ptr::null_mut(),
            webp::WebPGetDemuxABIVersion(),
        )
    };
    if demux.is_null() {
        return Err(invalid(
            "the animation's chunks do not parse (libwebp's demuxer)",
        ));
    }
    let mut iter = std::mem::MaybeUninit::<webp::WebPIterator>::zeroed();
    // SAFETY: `demux` is a live demuxer; the iterator is written by the call and released
    // before the demuxer is deleted.
    let frame = unsafe {
        let found = webp::WebPDemuxGetFrame(demux, 1, iter.as_mut_ptr()) != 0;
        let frame = found.then(|| {
            let iter = iter.assume_init_ref();
            let offset = iter.fragment.bytes.offset_from(data.as_ptr()) as usize;
            (
                offset..offset + iter.fragment.size,
                iter.x_offset as usize,
                iter.y_offset as usize,
                iter.width as usize,
                iter.height as usize,
            )
        });
        if found {
            webp::WebPDemuxReleaseIterator(iter.as_mut_ptr());
        }
        webp::WebPDemuxDelete(demux);
        frame
    };
    let (range, x, y, width, height) =
        frame.ok_or_else(|| invalid("the animation has no frame"))?;
    Ok(FirstFrame {
        bitstream: &data[range],
        x,
        y,
        width,
        height,
    })
}

impl Source for WebPHeader {
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
        _: &Limits,
        cancel: &Cancel,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        let (width, height) = (self.width as usize, self.height as usize);
        let mut config = config()?;
        let layout = self.layout();
        let channels = layout.channels();
        let stride = width * channels;
        // Zeroed: an animation's canvas is transparent black outside its first frame.
        let mut samples = vec![0u8; stride * height];
        let (bitstream, offset) = if self.animated {
            let frame = first_frame(data)?;
            if frame.x + frame.width > width || frame.y + frame.height > height {
                return Err(invalid(format!(
                    "the first frame ({}x{} at {},{}) reaches past the {width}x{height} canvas",
                    frame.width, frame.height, frame.x, frame.y
                )));
            }
            (frame.bitstream, frame.y * stride + frame.x * channels)
        } else {
            (data, 0)
        };
        config.output.colorspace = match layout {
            Layout::Rgba => webp::WEBP_CSP_MODE::MODE_RGBA,
            _ => webp::WEBP_CSP_MODE::MODE_RGB,
        };
        let target = &mut samples[offset..];
        config.output.u.RGBA = webp::WebPRGBABuffer {
            rgba: target.as_mut_ptr(),
            stride: stride as c_int,
            size: target.len(),
        };
        // SAFETY: `target` is ours, `size` bytes from the frame's top-left on the canvas with
        // the canvas's stride; libwebp checks that the frame fits in `size` before writing.
        unsafe { decode_into(bitstream, &mut config)? };
        cancel.check()?;
        GrayImage::from_samples(Format::WebP, samples, layout, width, height, flatten_alpha)
    }

    fn estimate(&self, heap: &mut Heap, flatten_alpha: bool) -> bool {
        let (width, height) = (u64::from(self.width), u64::from(self.height));
        let pixels = width * height;
        // libwebp's own buffers (C heap, not the Rust allocator's, but the worker's memory all
        // the same), from its sources: the lossy decoder keeps a few rows of macroblocks and
        // per-macroblock state; the lossless one the whole image as 32-bit ARGB plus 16 rows
        // for its colour cache and transforms; alpha a plane of its own.
        let lossy_rows = 64 * width + 8 * 1024 + width.div_ceil(16) * 1024;
        let internal = if self.lossless || self.animated {
            4 * (pixels + 16 * width) + lossy_rows
        } else {
            lossy_rows
        } + if self.alpha { pixels } else { 0 };
        let channels = self.layout().channels() as u64;
        heap.alloc(channels * pixels + internal);
        heap.free(internal);
        let alpha = channels == 4 && !flatten_alpha;
        heap.alloc(if alpha { 2 * pixels } else { pixels });
        heap.free(channels * pixels);
        alpha
    }
}
