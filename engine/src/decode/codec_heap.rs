//! Picture buffers for the C codecs (dav1d, libde265): their sizes, laid out as each codec's own
//! allocator lays them out (what the memory estimate counts), and their allocation from the Rust
//! heap through the codecs' picture allocation callbacks. A decoded picture is most of what
//! decoding an AVIF or HEIC holds: from here it is the process's own allocator's, which the
//! memory test's counting allocator sees, and each request is ours to refuse.

/// How a picture's chroma is sampled.
/// dav1d's picture alignment (`DAV1D_PICTURE_ALIGNMENT`).
pub(crate) const DAV1D_ALIGN: usize = 64;
/// libde265's plane alignment (`STANDARD_ALIGNMENT`).
pub(crate) const LIBDE265_ALIGN: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chroma {
    Monochrome,
    Yuv420,
    Yuv422,
    Yuv444,
}

impl Chroma {
    /// Horizontal and vertical subsampling, as shifts.
    pub(crate) fn shifts(self) -> (u32, u32) {
        match self {
            Chroma::Yuv420 => (1, 1),
            Chroma::Yuv422 => (1, 0),
            Chroma::Monochrome | Chroma::Yuv444 => (0, 0),
        }
    }
}

/// A picture's planes: the luma stride and size, the chroma stride and the size of each chroma
/// plane, their alignment and the padding after the last, all in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PictureLayout {
    pub y_stride: usize,
    pub y_bytes: usize,
    pub c_stride: usize,
    pub c_bytes: usize,
    pub align: usize,
    pub trailing: usize,
}

impl PictureLayout {
    /// dav1d's (`dav1d_default_picture_alloc`): planes padded to 128 pixels each way, strides
    /// moved off multiples of 1024 bytes, one buffer with 64 bytes of padding after it.
    pub(crate) fn dav1d(width: usize, height: usize, depth: u32, chroma: Chroma) -> Self {
        const ALIGN: usize = DAV1D_ALIGN;
        let wide = usize::from(depth > 8);
        let (w, h) = (align_up(width, 128), align_up(height, 128));
        let (sx, sy) = chroma.shifts();
        let off_1024 = |stride: usize| {
            stride
                + if stride.is_multiple_of(1024) {
                    ALIGN
                } else {
                    0
                }
        };
        let y_stride = off_1024(w << wide);
        let c_stride = match chroma {
            Chroma::Monochrome => 0,
            _ => off_1024((w << wide) >> sx),
        };
        PictureLayout {
            y_stride,
            y_bytes: y_stride * h,
            c_stride,
            c_bytes: c_stride * (h >> sy),
            align: ALIGN,
            trailing: ALIGN,
        }
    }

    /// libde265's (`de265_image_get_buffer`): each plane its own buffer, rows padded to 16
    /// samples, 16 bytes of padding after each; luma and chroma may differ in depth.
    pub(crate) fn libde265(
        width: usize,
        height: usize,
        (luma_depth, chroma_depth): (u32, u32),
        chroma: Chroma,
    ) -> Self {
        const ALIGN: usize = LIBDE265_ALIGN;
        let bytes = |depth: u32| if depth > 8 { 2 } else { 1 };
        let (sx, sy) = chroma.shifts();
        let y_stride = align_up(width, ALIGN) * bytes(luma_depth);
        let c_stride = match chroma {
            Chroma::Monochrome => 0,
            _ => align_up(width >> sx, ALIGN) * bytes(chroma_depth),
        };
        PictureLayout {
            y_stride,
            y_bytes: y_stride * height + ALIGN,
            c_stride,
            c_bytes: if c_stride == 0 {
                0
            } else {
                c_stride * (height >> sy) + ALIGN
            },
            align: ALIGN,
            trailing: 0,
        }
    }

    /// Every plane's bytes and the padding after them.
    pub(crate) fn total(&self) -> usize {
        self.y_bytes + 2 * self.c_bytes + self.trailing
    }
}

/// Rounds `n` up to a multiple of `to` (a power of two).
fn align_up(n: usize, to: usize) -> usize {
    (n + to - 1) & !(to - 1)
}

/// `size` zeroed bytes aligned to `align` (a power of two), or null where the size is zero or
/// too large or the allocator refuses. Zeroed: a damaged bitstream can leave blocks undecoded,
/// and the planes are read as Rust slices afterwards.
#[cfg(any(feature = "avif", feature = "heic"))]
pub(crate) fn allocate(size: usize, align: usize) -> *mut u8 {
    match std::alloc::Layout::from_size_align(size, align) {
        // SAFETY: the layout's size is not zero.
        Ok(layout) if size > 0 => unsafe { std::alloc::alloc_zeroed(layout) },
        _ => std::ptr::null_mut(),
    }
}

/// Frees what [`allocate`] returned for the same `size` and `align`.
///
/// # Safety
/// `ptr` must come from `allocate(size, align)` and not have been released.
#[cfg(any(feature = "avif", feature = "heic"))]
pub(crate) unsafe fn release(ptr: *mut u8, size: usize, align: usize) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: the caller vouches that `allocate` made this pointer with this layout, which was
    // valid then.
    unsafe {
        std::alloc::dealloc(
            ptr,
            std::alloc::Layout::from_size_align_unchecked(size, align),
        )
    }
}

/// Like [`allocate`], for a codec whose release callback gets only the pointer: the size is kept
/// in `align` bytes (at least a `usize`) in front of the pointer returned.
#[cfg(feature = "heic")]
pub(crate) fn allocate_sized(size: usize, align: usize) -> *mut u8 {
    debug_assert!(align >= size_of::<usize>());
    let Some(with_header) = size.checked_add(align) else {
        return std::ptr::null_mut();
    };
    let base = allocate(with_header, align);
    if base.is_null() {
        return base;
    }
    // SAFETY: `base` holds `align` (>= size_of::<usize>()) bytes and more, aligned for a usize.
    unsafe {
        base.cast::<usize>().write(size);
        base.add(align)
    }
}

/// Frees what [`allocate_sized`] returned for the same `align`.
///
/// # Safety
/// `ptr` must come from `allocate_sized(_, align)` and not have been released.
#[cfg(feature = "heic")]
pub(crate) unsafe fn release_sized(ptr: *mut u8, align: usize) {
    if ptr.is_null() {
        return;
    }
    // SAFETY: `allocate_sized` put the size `align` bytes before `ptr`, at the allocation's start.
    unsafe {
        let base = ptr.sub(align);
        let size = base.cast::<usize>().read();
        release(base, size + align, align);
    }
}
