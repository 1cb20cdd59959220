//! HEVC items (HEIC) through libde265: the `libde265-sys2` crate's `embedded-libde265` build
//! compiles its vendored sources statically (no system library, nothing fetched at build time).
//! Behind the cargo feature `heic` (on by default) because HEVC carries patent licensing in some
//! countries.
//!
//! The item's NAL units are length-prefixed (`hvcC` says how wide the prefix is); the parameter
//! sets come from `hvcC`'s arrays. libde265 decodes on the calling thread (no worker threads).
//! Every sequence parameter set, `hvcC`'s and any inside the item's data, is checked to declare
//! the container's picture size before libde265 reads it, so a small `ispe` cannot hide a large
//! frame: libde265 allocates a picture with SAO (most HEVC) through its own allocator, sized by
//! the stream alone. Pictures without SAO come from the Rust heap (`codec_heap`) through its
//! allocation callback, which refuses one larger than the container's too.

use std::ffi::{c_int, c_void};

use libde265_sys2 as de265;

use super::codec_heap::{self, Chroma, PictureLayout};
use super::heif::{Picture, Signal};
use crate::Format;
use crate::error::{Error, Result};

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(Format::Heic, reason)
}

/// A libde265 decoder, freed on drop.
struct Decoder(*mut de265::de265_decoder_context);

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: made by de265_new_decoder, freed once here.
        unsafe { de265::de265_free_decoder(self.0) };
    }
}

/// libde265's picture allocation callback: each plane from the Rust heap, laid out as
/// libde265's own allocator lays it out; `userdata` points to the most pixels a picture may
/// have. Returns 0 (failure) for a larger picture or a failed allocation.
unsafe extern "C" fn get_buffer(
    _: *mut de265::de265_decoder_context,
    spec: *mut de265::de265_image_spec,
    image: *mut de265::de265_image,
    userdata: *mut c_void,
) -> c_int {
    // SAFETY: libde265 hands over its spec and image, and our `userdata` (a live u64).
    let (spec, allowed) = unsafe { (&*spec, *userdata.cast::<u64>()) };
    let (Ok(width), Ok(height)) = (usize::try_from(spec.width), usize::try_from(spec.height))
    else {
        return 0;
    };
    if width as u64 * height as u64 > allowed {
        return 0;
    }
    // SAFETY: the image's chroma format and depths are set before its buffers are asked for.
    let (chroma, depths) = unsafe {
        (
            chroma(de265::de265_get_chroma_format(image)),
            (
                de265::de265_get_bits_per_pixel(image, 0) as u32,
                de265::de265_get_bits_per_pixel(image, 1) as u32,
            ),
        )
    };
    let layout = PictureLayout::libde265(width, height, depths, chroma);
    let planes = [
        (layout.y_bytes, layout.y_stride),
        (layout.c_bytes, layout.c_stride),
        (layout.c_bytes, layout.c_stride),
    ];
    // Every plane allocated before any is handed over: libde265 releases an image through
    // `release_buffer` whenever its first plane is set, even after this callback failed.
    let mut given = [std::ptr::null_mut(); 3];
    for (c, &(bytes, _)) in planes.iter().enumerate() {
        if bytes == 0 {
            continue;
        }
        given[c] = codec_heap::allocate_sized(bytes, layout.align);
        if given[c].is_null() {
            for &p in &given {
                // SAFETY: each was allocated just above and not handed over.
                unsafe { codec_heap::release_sized(p, layout.align) };
            }
            return 0;
        }
    }
    for (c, (&plane, &(_, stride))) in given.iter().zip(&planes).enumerate() {
        if plane.is_null() {
            continue;
        }
        // SAFETY: a plane of its `bytes` for the image libde265 is allocating; the pointer is
        // also the plane's user data, which `release_buffer` frees. The stride is in bytes:
        // libde265 divides it by the bytes a sample takes.
        unsafe {
            de265::de265_set_image_plane(
                image,
                c as c_int,
                plane.cast(),
                stride as c_int,
                plane.cast(),
            )
        };
    }
    1
}

/// libde265's picture release callback, for what [`get_buffer`] allocated.
unsafe extern "C" fn release_buffer(
    _: *mut de265::de265_decoder_context,
    image: *mut de265::de265_image,
    _: *mut c_void,
) {
    for c in 0..3 {
        // SAFETY: each plane's user data is the pointer `get_buffer` allocated, or null.
        unsafe {
            let plane = de265::de265_get_image_plane_user_data(image, c);
            codec_heap::release_sized(plane.cast(), codec_heap::LIBDE265_ALIGN);
        }
    }
}

fn chroma(format: de265::de265_chroma::Type) -> Chroma {
    match format {
        de265::de265_chroma::de265_chroma_mono => Chroma::Monochrome,
        de265::de265_chroma::de265_chroma_420 => Chroma::Yuv420,
        de265::de265_chroma::de265_chroma_422 => Chroma::Yuv422,
        _ => Chroma::Yuv444,
    }
}

/// `hvcC`'s NAL unit length size and its parameter-set NAL units.
fn parse_config(config: &[u8]) -> Result<(usize, Vec<&[u8]>)> {
    let short = || invalid("truncated 'hvcC'");
    let length_size = usize::from(config.get(21).ok_or_else(short)? & 3) + 1;
    let arrays = *config.get(22).ok_or_else(short)?;
    let mut pos = 23;
    let mut nals = Vec::new();
    for _ in 0..arrays {
        let count = config.get(pos + 1..pos + 3).ok_or_else(short)?;
        let count = u16::from_be_bytes([count[0], count[1]]);
        pos += 3;
        for _ in 0..count {
            let len = config.get(pos..pos + 2).ok_or_else(short)?;
            let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
            nals.push(config.get(pos + 2..pos + 2 + len).ok_or_else(short)?);
            pos += 2 + len;
        }
    }
    Ok((length_size, nals))
}

/// Reads exp-Golomb and fixed-width fields from a NAL unit's payload, emulation prevention
/// bytes removed.
struct Bits {
    bytes: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn new(nal: &[u8]) -> Bits {
        let mut bytes = Vec::with_capacity(nal.len());
        let mut zeros = 0;
        for &b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0;
                continue;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            bytes.push(b);
        }
        Bits { bytes, pos: 0 }
    }

    fn bit(&mut self) -> Result<u32> {
        let byte = self
            .bytes
            .get(self.pos / 8)
            .ok_or_else(|| invalid("the sequence parameter set ends early"))?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Ok(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Result<u32> {
        (0..n).try_fold(0, |acc, _| Ok((acc << 1) | self.bit()?))
    }

    fn ue(&mut self) -> Result<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return Err(invalid(
                    "a malformed exp-Golomb code in the sequence parameter set",
                ));
            }
        }
        Ok(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }
}

/// The picture size a sequence parameter set NAL unit declares (H.265 7.3.2.2).
fn sps_size(nal: &[u8]) -> Result<(u32, u32)> {
    // Two bytes of NAL header, then the SPS.
    let mut r = Bits::new(nal.get(2..).unwrap_or_default());
    r.bits(4)?; // sps_video_parameter_set_id
    let max_sub_layers_minus1 = r.bits(3)?;
    r.bit()?; // temporal_id_nesting
    // profile_tier_level: the general profile (88 bits) and level (8).
    r.bits(32)?;
    r.bits(32)?;
    r.bits(24)?;
    r.bits(8)?;
    let mut sub_layers = Vec::new();
    for _ in 0..max_sub_layers_minus1 {
        sub_layers.push((r.bit()?, r.bit()?));
    }
    if max_sub_layers_minus1 > 0 {
        for _ in max_sub_layers_minus1..8 {
            r.bits(2)?;
        }
    }
    for (profile, level) in sub_layers {
        if profile == 1 {
            r.bits(32)?;
            r.bits(32)?;
            r.bits(24)?;
        }
        if level == 1 {
            r.bits(8)?;
        }
    }
    r.ue()?; // sps_seq_parameter_set_id
    if r.ue()? == 3 {
        r.bit()?; // separate_colour_plane_flag
    }
    Ok((r.ue()?, r.ue()?))
}

/// Refuses `nal` if it is a sequence parameter set whose picture is not the container's
/// `width` x `height`: the coded size may pad the picture to whole coding blocks (at most 64
/// pixels), anything larger is not this item.
fn check_picture_size(nal: &[u8], width: u32, height: u32) -> Result<()> {
    if nal.first().map(|b| (b >> 1) & 0x3F) != Some(33) {
        return Ok(());
    }
    let (w, h) = sps_size(nal)?;
    if w < width || h < height || w - width >= 64 || h - height >= 64 {
        return Err(invalid(format!(
            "the container says {width}x{height}, the sequence parameter set {w}x{h}"
        )));
    }
    Ok(())
}

/// Decodes the HEVC item `bitstream` (`width` x `height` by its container, configured by
/// `config`, its `hvcC`) and hands the picture to `f`.
pub(crate) fn decode(
    config: &[u8],
    bitstream: &[u8],
    width: u32,
    height: u32,
    f: &mut dyn FnMut(&Picture) -> Result<()>,
) -> Result<()> {
    let (length_size, parameter_sets) = parse_config(config)?;
    for nal in &parameter_sets {
        check_picture_size(nal, width, height)?;
    }
    // The most pixels a picture may have: the container's size padded as the check above allows.
    // Declared before the decoder, which holds a pointer to it until it is dropped.
    let allowed: u64 = (u64::from(width) + 63) * (u64::from(height) + 63);
    // SAFETY: a new decoder, freed by `Decoder`'s drop.
    let decoder = Decoder(unsafe { de265::de265_new_decoder() });
    if decoder.0.is_null() {
        return Err(Error::Internal("libde265 could not make a decoder".into()));
    }
    let mut allocation = de265::de265_image_allocation {
        get_buffer: Some(get_buffer),
        release_buffer: Some(release_buffer),
    };
    // SAFETY: libde265 copies the functions; `allowed` outlives the decoder.
    unsafe {
        de265::de265_set_image_allocation_functions(
            decoder.0,
            &mut allocation,
            (&allowed as *const u64).cast_mut().cast(),
        )
    };
    let push = |nal: &[u8]| -> Result<()> {
        // SAFETY: libde265 copies the NAL unit; `nal` is a valid slice.
        let code = unsafe {
            de265::de265_push_NAL(
                decoder.0,
                nal.as_ptr().cast(),
                nal.len() as c_int,
                0,
                std::ptr::null_mut(),
            )
        };
        if code != de265::de265_error::DE265_OK {
            return Err(invalid(format!(
                "libde265 refused a NAL unit (error {code})"
            )));
        }
        Ok(())
    };
    for nal in parameter_sets {
        push(nal)?;
    }
    let mut rest = bitstream;
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_at_checked(length_size)
            .ok_or_else(|| invalid("truncated: a NAL unit's length is cut"))?;
        let len = len
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let nal = tail
            .get(..len)
            .ok_or_else(|| invalid("truncated: a NAL unit ends past its item"))?;
        check_picture_size(nal, width, height)?;
        push(nal)?;
        rest = &tail[len..];
    }
    // SAFETY: a live decoder.
    unsafe { de265::de265_flush_data(decoder.0) };
    loop {
        let mut more: c_int = 0;
        // SAFETY: a live decoder; it decodes what was pushed, on this thread.
        let code = unsafe { de265::de265_decode(decoder.0, &mut more) };
        // SAFETY: a live decoder; the image stays valid until the next libde265 call.
        let image = unsafe { de265::de265_get_next_picture(decoder.0) };
        if !image.is_null() {
            // SAFETY: `image` is live until the next call on the decoder, after `f` returns.
            return unsafe { hand_over(image, f) };
        }
        if code != de265::de265_error::DE265_OK || more == 0 {
            return Err(invalid(format!("libde265 gave no picture (error {code})")));
        }
    }
}

/// # Safety
/// `image` must be a live libde265 image.
unsafe fn hand_over(
    image: *const de265::de265_image,
    f: &mut dyn FnMut(&Picture) -> Result<()>,
) -> Result<()> {
    // SAFETY: the caller vouches for `image`.
    unsafe {
        let chroma = chroma(de265::de265_get_chroma_format(image));
        let monochrome = chroma == Chroma::Monochrome;
        let chroma_shift = chroma.shifts();
        let depth = de265::de265_get_bits_per_pixel(image, 0);
        if !(8..=16).contains(&depth) {
            return Err(invalid(format!("{depth}-bit samples")));
        }
        let mut planes: [&[u8]; 3] = [&[], &[], &[]];
        let mut strides = [0usize; 3];
        let channels = if monochrome { 1 } else { 3 };
        let sample_bytes = if depth > 8 { 2 } else { 1 };
        for c in 0..channels {
            let mut stride: c_int = 0;
            let data = de265::de265_get_image_plane(image, c as c_int, &mut stride);
            let rows = de265::de265_get_image_height(image, c as c_int);
            let columns = de265::de265_get_image_width(image, c as c_int);
            if data.is_null() || stride <= 0 || rows <= 0 || columns <= 0 {
                return Err(invalid("libde265 gave an empty plane"));
            }
            // Rows are read `stride` apart, each `columns` samples long.
            if (stride as usize) < columns as usize * sample_bytes {
                return Err(Error::Internal(format!(
                    "libde265 gave plane {c} rows of {stride} bytes for {columns} samples"
                )));
            }
            // The plane from its cropped start: whole rows but the last, which ends at its last
            // sample (a left crop moves the start into the row, so `rows` whole strides from
            // there would run past the buffer).
            let length = (rows as usize - 1) * stride as usize + columns as usize * sample_bytes;
            planes[c] = std::slice::from_raw_parts(data, length);
            strides[c] = stride as usize;
        }
        f(&Picture {
            width: de265::de265_get_image_width(image, 0) as usize,
            height: de265::de265_get_image_height(image, 0) as usize,
            depth: depth as u32,
            planes,
            strides,
            chroma_shift,
            monochrome,
            // The sequence parameter set's VUI, as libde265 reads it (limited range and an
            // unspecified matrix where there is none); libheif takes these where the item has
            // no `colr`, and so does the container reader.
            signal: Some(Signal {
                matrix: de265::de265_get_image_matrix_coefficients(image) as u16,
                full_range: de265::de265_get_image_full_range_flag(image) != 0,
            }),
        })
    }
}
