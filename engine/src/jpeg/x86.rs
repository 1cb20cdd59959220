//! Eight 32-bit lanes in one AVX2 register as a [`Sample`], and the 8x8 transpose: what the
//! forward DCT's and the inverse DCT's AVX2 twins share.
//!
//! SAFETY (every `unsafe` block below): a `Vector` is only ever made inside those twins, which
//! run only where the CPU reported AVX2, so any code holding one runs on such a CPU.

use super::islow::Sample;
use std::arch::x86_64::*;

/// Eight 32-bit lanes: a row (or a column) of a block.
#[derive(Clone, Copy)]
pub(crate) struct Vector(pub(crate) __m256i);

impl std::ops::Add for Vector {
    type Output = Vector;
    #[inline(always)]
    fn add(self, other: Vector) -> Vector {
        Vector(unsafe { _mm256_add_epi32(self.0, other.0) })
    }
}

impl std::ops::Sub for Vector {
    type Output = Vector;
    #[inline(always)]
    fn sub(self, other: Vector) -> Vector {
        Vector(unsafe { _mm256_sub_epi32(self.0, other.0) })
    }
}

impl Sample for Vector {
    #[inline(always)]
    fn times(self, c: i64) -> Vector {
        Vector(unsafe { _mm256_mullo_epi32(self.0, _mm256_set1_epi32(c as i32)) })
    }
    #[inline(always)]
    fn shl(self, n: i64) -> Vector {
        Vector(unsafe { _mm256_sll_epi32(self.0, _mm_cvtsi64_si128(n)) })
    }
    #[inline(always)]
    fn descale(self, n: i64) -> Vector {
        unsafe {
            let rounded = _mm256_add_epi32(self.0, _mm256_set1_epi32(1 << (n - 1)));
            Vector(_mm256_sra_epi32(rounded, _mm_cvtsi64_si128(n)))
        }
    }
}

/// Rows to columns of an 8x8 matrix of 32-bit values.
#[inline(always)]
pub(crate) fn transpose(m: [Vector; 8]) -> [Vector; 8] {
    unsafe {
        let t: [__m256i; 8] = std::array::from_fn(|i| {
            let (a, b) = (m[i & !1].0, m[i | 1].0);
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        let u: [__m256i; 8] = std::array::from_fn(|i| {
            let first = (i & 4) | ((i >> 1) & 1);
            let (a, b) = (t[first], t[first + 2]);
            if i & 1 == 0 {
                _mm256_unpacklo_epi64(a, b)
            } else {
                _mm256_unpackhi_epi64(a, b)
            }
        });
        std::array::from_fn(|i| {
            let (a, b) = (u[i & 3], u[(i & 3) | 4]);
            Vector(if i < 4 {
                _mm256_permute2x128_si256::<0x20>(a, b)
            } else {
                _mm256_permute2x128_si256::<0x31>(a, b)
            })
        })
    }
}
