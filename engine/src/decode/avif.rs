//! AV1 items (AVIF) through dav1d: the `libdav1d-sys` crate builds its vendored dav1d statically
//! with meson, ninja and nasm (no system library, nothing fetched at build time). One thread and
//! one frame of delay, as for a still image; dav1d refuses a frame larger than the container
//! declared (`frame_size_limit`) before allocating for it. Its pictures come from the Rust heap
//! (`codec_heap`).

use std::ffi::{c_int, c_void};

use libdav1d_sys as dav1d;

use super::codec_heap::{self, Chroma, PictureLayout};
use super::heif::{Picture, Signal};
use crate::Format;
use crate::error::{Error, Result};

fn failed(what: &str, code: c_int) -> Error {
    Error::invalid(Format::Avif, format!("dav1d: {what} failed ({code})"))
}

/// dav1d's "try again": it wants its output taken, or more input.
const EAGAIN: c_int = -11;

/// The data is ours and outlives the decoder: nothing to free.
unsafe extern "C" fn keep(_: *const u8, _: *mut c_void) {}

/// dav1d's `DAV1D_ERR(ENOMEM)`.
const ENOMEM: c_int = -12;

fn chroma(layout: dav1d::Dav1dPixelLayout) -> Chroma {
    match layout {
        dav1d::Dav1dPixelLayout::DAV1D_PIXEL_LAYOUT_I400 => Chroma::Monochrome,
        dav1d::Dav1dPixelLayout::DAV1D_PIXEL_LAYOUT_I420 => Chroma::Yuv420,
        dav1d::Dav1dPixelLayout::DAV1D_PIXEL_LAYOUT_I422 => Chroma::Yuv422,
        _ => Chroma::Yuv444,
    }
}

/// dav1d's picture allocation callback: one buffer laid out as dav1d's own allocator lays it
/// out, from the Rust heap; its size is kept in `allocator_data` for the release.
unsafe extern "C" fn alloc_picture(picture: *mut dav1d::Dav1dPicture, _: *mut c_void) -> c_int {
    // SAFETY: dav1d hands over a picture whose parameters are set, for us to fill.
    let picture = unsafe { &mut *picture };
    let p = &picture.p;
    let layout = PictureLayout::dav1d(p.w as usize, p.h as usize, p.bpc as u32, chroma(p.layout));
    let total = layout.total();
    let buffer = codec_heap::allocate(total, layout.align);
    if buffer.is_null() {
        return ENOMEM;
    }
    let monochrome = layout.c_stride == 0;
    // SAFETY: both offsets are within the `total` bytes just allocated.
    let (u, v) = unsafe {
        (
            buffer.add(layout.y_bytes),
            buffer.add(layout.y_bytes + layout.c_bytes),
        )
    };
    let null = std::ptr::null_mut();
    picture.data = [
        buffer.cast(),
        if monochrome { null } else { u.cast() },
        if monochrome { null } else { v.cast() },
    ];
    picture.stride = [layout.y_stride as isize, layout.c_stride as isize];
    picture.allocator_data = total as *mut c_void;
    0
}

/// dav1d's picture release callback, for what [`alloc_picture`] allocated.
unsafe extern "C" fn release_picture(picture: *mut dav1d::Dav1dPicture, _: *mut c_void) {
    // SAFETY: dav1d hands back a picture `alloc_picture` filled.
    let picture = unsafe { &*picture };
    let total = picture.allocator_data as usize;
    // SAFETY: `data[0]` is the buffer `alloc_picture` allocated with this size and alignment.
    unsafe { codec_heap::release(picture.data[0].cast(), total, codec_heap::DAV1D_ALIGN) };
}

/// A dav1d context, closed on drop.
struct Context(*mut dav1d::Dav1dContext);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: opened by dav1d_open, closed once here.
        unsafe { dav1d::dav1d_close(&mut self.0) };
    }
}

/// A picture dav1d handed out, released on drop.
struct Decoded(dav1d::Dav1dPicture);

impl Drop for Decoded {
    fn drop(&mut self) {
        // SAFETY: filled by dav1d_get_picture, released once here.
        unsafe { dav1d::dav1d_picture_unref(&mut self.0) };
    }
}

/// A plane of `rows` rows `stride` bytes apart, the last `row_bytes` long.
///
/// # Safety
/// `data` must point to that many bytes, valid for `'p`.
unsafe fn plane<'p>(data: *mut c_void, stride: usize, rows: usize, row_bytes: usize) -> &'p [u8] {
    if rows == 0 {
        return &[];
    }
    // SAFETY: the caller vouches for the bytes.
    unsafe { std::slice::from_raw_parts(data as *const u8, stride * (rows - 1) + row_bytes) }
}

/// Decodes the AV1 item `bitstream` (`width` x `height` by its container) and hands the picture
/// to `f`. The item carries its own sequence header; `av1C` is not needed to decode.
pub(crate) fn decode(
    _config: &[u8],
    bitstream: &[u8],
    width: u32,
    height: u32,
    f: &mut dyn FnMut(&Picture) -> Result<()>,
) -> Result<()> {
    let mut settings = std::mem::MaybeUninit::<dav1d::Dav1dSettings>::zeroed();
    // SAFETY: dav1d_default_settings fills the whole struct.
    let mut settings = unsafe {
        dav1d::dav1d_default_settings(settings.as_mut_ptr());
        settings.assume_init()
    };
    settings.n_threads = 1;
    settings.max_frame_delay = 1;
    settings.all_layers = 0;
    settings.frame_size_limit = width.saturating_mul(height);
    settings.allocator = dav1d::Dav1dPicAllocator {
        cookie: std::ptr::null_mut(),
        alloc_picture_callback: Some(alloc_picture),
        release_picture_callback: Some(release_picture),
    };
    let mut context = Context(std::ptr::null_mut());
    // SAFETY: `settings` is initialised; dav1d writes the context pointer.
    let code = unsafe { dav1d::dav1d_open(&mut context.0, &settings) };
    if code != 0 {
        return Err(Error::Internal(format!("dav1d_open failed ({code})")));
    }
    let mut data = std::mem::MaybeUninit::<dav1d::Dav1dData>::zeroed();
    // SAFETY: `bitstream` outlives the context (dropped before this returns); `keep` frees
    // nothing.
    let code = unsafe {
        dav1d::dav1d_data_wrap(
            data.as_mut_ptr(),
            bitstream.as_ptr(),
            bitstream.len(),
            Some(keep),
            std::ptr::null_mut(),
        )
    };
    if code != 0 {
        return Err(failed("wrapping the data", code));
    }
    // SAFETY: initialised by dav1d_data_wrap.
    let mut data = unsafe { data.assume_init() };
    let picture = loop {
        if data.sz > 0 {
            // SAFETY: a live context and wrapped data; dav1d advances `data` as it consumes.
            let code = unsafe { dav1d::dav1d_send_data(context.0, &mut data) };
            if code < 0 && code != EAGAIN {
                // SAFETY: drops dav1d's reference to our (unowned) data.
                unsafe { dav1d::dav1d_data_unref(&mut data) };
                return Err(failed("decoding", code));
            }
        }
        // SAFETY: an all-zero picture is dav1d's empty one.
        let mut picture: dav1d::Dav1dPicture = unsafe { std::mem::zeroed() };
        // SAFETY: a live context; dav1d fills `picture` when it returns 0.
        let code = unsafe { dav1d::dav1d_get_picture(context.0, &mut picture) };
        match code {
            0 => break Decoded(picture),
            EAGAIN if data.sz > 0 => continue,
            _ => {
                // SAFETY: as above.
                unsafe { dav1d::dav1d_data_unref(&mut data) };
                return Err(if code == EAGAIN {
                    Error::invalid(Format::Avif, "truncated: the AV1 data ends before a frame")
                } else {
                    failed("decoding", code)
                });
            }
        }
    };
    // SAFETY: as above.
    unsafe { dav1d::dav1d_data_unref(&mut data) };
    let p = &picture.0;
    let (w, h) = (p.p.w as usize, p.p.h as usize);
    let depth = p.p.bpc as u32;
    let monochrome = chroma(p.p.layout) == Chroma::Monochrome;
    let chroma_shift = chroma(p.p.layout).shifts();
    let bytes = if depth > 8 { 2 } else { 1 };
    let (cw, ch) = (
        (w + chroma_shift.0 as usize) >> chroma_shift.0,
        (h + chroma_shift.1 as usize) >> chroma_shift.1,
    );
    let (y_stride, c_stride) = (p.stride[0] as usize, p.stride[1] as usize);
    // SAFETY: dav1d's planes hold `stride` bytes a row (the last row at least its samples)
    // while the picture is referenced, which it is until `picture` drops after `f` returns.
    let planes = unsafe {
        if monochrome {
            [plane(p.data[0], y_stride, h, w * bytes), &[][..], &[][..]]
        } else {
            [
                plane(p.data[0], y_stride, h, w * bytes),
                plane(p.data[1], c_stride, ch, cw * bytes),
                plane(p.data[2], c_stride, ch, cw * bytes),
            ]
        }
    };
    // SAFETY: every picture dav1d outputs carries its sequence header.
    let signal = unsafe { p.seq_hdr.as_ref() }.map(|seq| Signal {
        matrix: seq.mtrx as u16,
        full_range: seq.color_range != 0,
    });
    f(&Picture {
        width: w,
        height: h,
        depth,
        planes,
        strides: [y_stride, c_stride, c_stride],
        chroma_shift,
        monochrome,
        signal,
    })
}
