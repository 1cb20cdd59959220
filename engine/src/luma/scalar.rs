//! The reference formulas. Every SIMD kernel must match these bit for bit.

/// BT.601 luma with Pillow's `convert('L')` weights: `(19595 R + 38470 G + 7471 B + 32768) >> 16`.
#[inline(always)]
pub fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((19595 * u32::from(r) + 38470 * u32::from(g) + 7471 * u32::from(b) + 32768) >> 16) as u8
}

/// `y` seen through alpha `a` over a white background, rounded to nearest:
/// `(y * a + 255 * (255 - a) + 127) / 255`.
#[inline(always)]
pub fn over_white(y: u8, a: u8) -> u8 {
    let (y, a) = (u32::from(y), u32::from(a));
    ((y * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Packed RGB to luma: `out[i]` from `rgb[3 i..3 i + 3]`.
pub fn rgb(rgb: &[u8], out: &mut [u8]) {
    for (px, y) in rgb.chunks_exact(3).zip(out.iter_mut()) {
        *y = luma(px[0], px[1], px[2]);
    }
}

/// Packed RGBA to luma, alpha ignored.
pub fn rgba(rgba: &[u8], out: &mut [u8]) {
    for (px, y) in rgba.chunks_exact(4).zip(out.iter_mut()) {
        *y = luma(px[0], px[1], px[2]);
    }
}

/// Packed RGBA to luma composited over white.
pub fn rgba_over_white(rgba: &[u8], out: &mut [u8]) {
    for (px, y) in rgba.chunks_exact(4).zip(out.iter_mut()) {
        *y = over_white(luma(px[0], px[1], px[2]), px[3]);
    }
}
