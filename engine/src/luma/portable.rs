//! The kernels on `wide`: NEON on aarch64, SSE2 on a default x86_64 build, AVX2 when the whole
//! build targets `x86-64-v3`. `wide` picks its instructions at compile time, which is why x86_64
//! also has a hand-written AVX2 kernel chosen at run time (`avx2.rs`).

use super::scalar;
use wide::u32x8;

const LANES: usize = 8;

/// One step: eight pixels' channels in 32-bit lanes to eight luma values.
#[inline(always)]
fn luma8(r: u32x8, g: u32x8, b: u32x8) -> [u32; LANES] {
    let sum = r * u32x8::splat(19595)
        + g * u32x8::splat(38470)
        + b * u32x8::splat(7471)
        + u32x8::splat(32768);
    (sum >> 16_u32).to_array()
}

/// Gathers channel `c` of eight pixels of `stride` bytes into 32-bit lanes.
#[inline(always)]
fn channel(px: &[u8], stride: usize, c: usize) -> u32x8 {
    u32x8::new(std::array::from_fn(|i| u32::from(px[i * stride + c])))
}

fn kernel(src: &[u8], stride: usize, out: &mut [u8], over_white: bool) {
    let full = out.len().min(src.len() / stride) / LANES * LANES;
    for (px, y) in src[..full * stride]
        .chunks_exact(LANES * stride)
        .zip(out[..full].chunks_exact_mut(LANES))
    {
        let lumas = luma8(
            channel(px, stride, 0),
            channel(px, stride, 1),
            channel(px, stride, 2),
        );
        if over_white {
            let a = channel(px, stride, 3);
            // (y * a + 255 * (255 - a) + 127) / 255, the division done exactly as a multiply-shift:
            // for t < 2^16, t / 255 == (t * 32897) >> 23.
            let t = u32x8::new(lumas) * a
                + u32x8::splat(255) * (u32x8::splat(255) - a)
                + u32x8::splat(127);
            let v = ((t * u32x8::splat(32897)) >> 23_u32).to_array();
            for (o, v) in y.iter_mut().zip(v) {
                *o = v as u8;
            }
        } else {
            for (o, v) in y.iter_mut().zip(lumas) {
                *o = v as u8;
            }
        }
    }
    let (src, out) = (&src[full * stride..], &mut out[full..]);
    match (stride, over_white) {
        (3, _) => scalar::rgb(src, out),
        (_, false) => scalar::rgba(src, out),
        (_, true) => scalar::rgba_over_white(src, out),
    }
}

pub fn rgb(rgb: &[u8], out: &mut [u8]) {
    kernel(rgb, 3, out, false);
}

pub fn rgba(rgba: &[u8], out: &mut [u8]) {
    kernel(rgba, 4, out, false);
}

pub fn rgba_over_white(rgba: &[u8], out: &mut [u8]) {
    kernel(rgba, 4, out, true);
}
