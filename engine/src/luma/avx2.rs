//! The AVX2 kernels, chosen at run time on x86_64 CPUs that have AVX2.
//!
//! Eight pixels per step. Pillow's weight for G (38470) does not fit a signed 16-bit lane, but
//! 38470 = 2 x 19235 does: two `vpmaddwd` over (R, G) and (G, B) pairs with weights
//! (19595, 19235) and (19235, 7471) give the exact 32-bit sum, so the result equals the scalar
//! reference bit for bit.

use super::scalar;
use std::arch::x86_64::*;

/// Loads eight pixels of `STRIDE` bytes (3 or 4) into two 128-bit lanes of four pixels each and
/// returns the exact luma sums `19595 R + 38470 G + 7471 B + 32768` in eight 32-bit lanes.
///
/// # Safety
/// The CPU must support AVX2 and `px` must hold at least 32 readable bytes.
#[inline(always)]
unsafe fn sums8<const STRIDE: usize>(px: &[u8]) -> __m256i {
    debug_assert!(px.len() >= 32);
    // SAFETY: the caller guarantees 32 readable bytes and AVX2.
    unsafe {
        let raw = _mm256_loadu_si256(px.as_ptr().cast());
        // Pixels 0..4 to the low lane, 4..8 to the high lane.
        let lanes = if STRIDE == 3 {
            _mm256_permutevar8x32_epi32(raw, _mm256_setr_epi32(0, 1, 2, 0, 3, 4, 5, 0))
        } else {
            raw
        };
        // In each 128-bit lane, channels `a` and `b` of its four pixels as 16-bit pairs: the
        // byte indices of a, b (each followed by a zeroing index: top bit set) for pixel 0..4.
        let pairs = |a: usize, b: usize| {
            let indices: [i8; 32] = std::array::from_fn(|i| {
                let (pixel, byte) = ((i % 16) / 4, i % 4);
                match byte {
                    0 => (pixel * STRIDE + a) as i8,
                    2 => (pixel * STRIDE + b) as i8,
                    _ => -128,
                }
            });
            _mm256_loadu_si256(indices.as_ptr().cast())
        };
        let rg = _mm256_shuffle_epi8(lanes, pairs(0, 1));
        let gb = _mm256_shuffle_epi8(lanes, pairs(1, 2));
        let w_rg = _mm256_set1_epi32((19235 << 16) | 19595);
        let w_gb = _mm256_set1_epi32((7471 << 16) | 19235);
        let sum = _mm256_add_epi32(_mm256_madd_epi16(rg, w_rg), _mm256_madd_epi16(gb, w_gb));
        _mm256_add_epi32(sum, _mm256_set1_epi32(32768))
    }
}

/// Eight 32-bit values (each 0..=255) to eight bytes in pixel order.
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn store8(values: __m256i, out: &mut [u8]) {
    // SAFETY: AVX2 is guaranteed by the caller; the store writes into a local array.
    unsafe {
        let words = _mm256_packus_epi32(values, values); // lane0: v0..3 v0..3, lane1: v4..7 v4..7
        let bytes = _mm256_packus_epi16(words, words);
        let lo = _mm256_castsi256_si128(bytes);
        let hi = _mm256_extracti128_si256::<1>(bytes);
        let mut tmp = [0u8; 16];
        _mm_storeu_si128(tmp.as_mut_ptr().cast(), _mm_unpacklo_epi32(lo, hi));
        out[..8].copy_from_slice(&tmp[..8]);
    }
}

/// # Safety
/// The CPU must support AVX2.
#[target_feature(enable = "avx2")]
unsafe fn kernel<const STRIDE: usize, const OVER_WHITE: bool>(src: &[u8], out: &mut [u8]) {
    let n = out.len().min(src.len() / STRIDE);
    // Each step reads 32 bytes from the start of its 8 pixels; stop where fewer remain.
    let steps = if n * STRIDE >= 32 {
        (n * STRIDE - 32) / (8 * STRIDE) + 1
    } else {
        0
    };
    for i in 0..steps {
        let px = &src[i * 8 * STRIDE..];
        // SAFETY: `steps` keeps 32 bytes readable from `px`; AVX2 is enabled on this function.
        unsafe {
            let mut y = _mm256_srli_epi32::<16>(sums8::<STRIDE>(px));
            if OVER_WHITE {
                // alpha bytes to 32-bit lanes, then (y a + 255 (255 - a) + 127) / 255, where
                // t / 255 == (t * 32897) >> 23 for every t below 2^16.
                let raw = _mm_loadu_si128(px.as_ptr().cast::<__m128i>());
                let raw2 = _mm_loadu_si128(px.as_ptr().add(16).cast::<__m128i>());
                let pick =
                    _mm_setr_epi8(3, 7, 11, 15, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
                let a_lo = _mm_shuffle_epi8(raw, pick);
                let a_hi = _mm_shuffle_epi8(raw2, pick);
                let a = _mm256_cvtepu8_epi32(_mm_unpacklo_epi32(a_lo, a_hi));
                let c255 = _mm256_set1_epi32(255);
                let t = _mm256_add_epi32(
                    _mm256_add_epi32(
                        _mm256_mullo_epi32(y, a),
                        _mm256_mullo_epi32(c255, _mm256_sub_epi32(c255, a)),
                    ),
                    _mm256_set1_epi32(127),
                );
                y = _mm256_srli_epi32::<23>(_mm256_mullo_epi32(t, _mm256_set1_epi32(32897)));
            }
            store8(y, &mut out[i * 8..]);
        }
    }
    let done = steps * 8;
    let (src, out) = (&src[done * STRIDE..], &mut out[done..n]);
    match (STRIDE, OVER_WHITE) {
        (3, _) => scalar::rgb(src, out),
        (_, false) => scalar::rgba(src, out),
        (_, true) => scalar::rgba_over_white(src, out),
    }
}

/// # Safety
/// The CPU must support AVX2.
pub unsafe fn rgb(rgb: &[u8], out: &mut [u8]) {
    // SAFETY: forwarded from the caller.
    unsafe { kernel::<3, false>(rgb, out) }
}

/// # Safety
/// The CPU must support AVX2.
pub unsafe fn rgba(rgba: &[u8], out: &mut [u8]) {
    // SAFETY: forwarded from the caller.
    unsafe { kernel::<4, false>(rgba, out) }
}

/// # Safety
/// The CPU must support AVX2.
pub unsafe fn rgba_over_white(rgba: &[u8], out: &mut [u8]) {
    // SAFETY: forwarded from the caller.
    unsafe { kernel::<4, true>(rgba, out) }
}
