//! Eight 32-bit lanes in two NEON registers as a [`Sample`], and the 8x8 transpose: what the
//! inverse DCT's and the forward DCT's NEON twins share.
//!
//! SAFETY (every `unsafe` block below): NEON is part of the aarch64-unknown-linux-gnu target's
//! baseline, so every CPU this code is built for has it; the intrinsics are unsafe to call only
//! because this code does not repeat that as a `#[target_feature]` (which trait methods cannot
//! carry).

use super::islow::Sample;
use std::arch::aarch64::*;

/// Eight 32-bit lanes in two registers: a row (or a column) of a block.
#[derive(Clone, Copy)]
pub(crate) struct Vector(pub(crate) int32x4_t, pub(crate) int32x4_t);

impl Vector {
    #[inline(always)]
    fn each(self, f: impl Fn(int32x4_t) -> int32x4_t) -> Vector {
        Vector(f(self.0), f(self.1))
    }
}

impl std::ops::Add for Vector {
    type Output = Vector;
    #[inline(always)]
    fn add(self, other: Vector) -> Vector {
        unsafe { Vector(vaddq_s32(self.0, other.0), vaddq_s32(self.1, other.1)) }
    }
}

impl std::ops::Sub for Vector {
    type Output = Vector;
    #[inline(always)]
    fn sub(self, other: Vector) -> Vector {
        unsafe { Vector(vsubq_s32(self.0, other.0), vsubq_s32(self.1, other.1)) }
    }
}

impl Sample for Vector {
    #[inline(always)]
    fn times(self, c: i64) -> Vector {
        self.each(|x| unsafe { vmulq_n_s32(x, c as i32) })
    }
    #[inline(always)]
    fn shl(self, n: i64) -> Vector {
        self.each(|x| unsafe { vshlq_s32(x, vdupq_n_s32(n as i32)) })
    }
    #[inline(always)]
    fn descale(self, n: i64) -> Vector {
        // A shift by a negative count is an arithmetic shift right.
        self.each(|x| unsafe {
            vshlq_s32(
                vaddq_s32(x, vdupq_n_s32(1 << (n - 1))),
                vdupq_n_s32(-(n as i32)),
            )
        })
    }
}

/// Transposes the 4x4 matrix of rows `a, b, c, d`.
#[inline(always)]
fn transpose4(a: int32x4_t, b: int32x4_t, c: int32x4_t, d: int32x4_t) -> [int32x4_t; 4] {
    unsafe {
        let (ab_even, ab_odd) = (vtrn1q_s32(a, b), vtrn2q_s32(a, b));
        let (cd_even, cd_odd) = (vtrn1q_s32(c, d), vtrn2q_s32(c, d));
        let halves = |x: int32x4_t, y: int32x4_t, high: bool| {
            let (x, y) = (vreinterpretq_s64_s32(x), vreinterpretq_s64_s32(y));
            vreinterpretq_s32_s64(if high {
                vtrn2q_s64(x, y)
            } else {
                vtrn1q_s64(x, y)
            })
        };
        [
            halves(ab_even, cd_even, false),
            halves(ab_odd, cd_odd, false),
            halves(ab_even, cd_even, true),
            halves(ab_odd, cd_odd, true),
        ]
    }
}

/// Rows to columns of an 8x8 matrix: four 4x4 transposes, the off-diagonal ones swapped.
#[inline(always)]
pub(crate) fn transpose(m: [Vector; 8]) -> [Vector; 8] {
    let top_left = transpose4(m[0].0, m[1].0, m[2].0, m[3].0);
    let top_right = transpose4(m[0].1, m[1].1, m[2].1, m[3].1);
    let bottom_left = transpose4(m[4].0, m[5].0, m[6].0, m[7].0);
    let bottom_right = transpose4(m[4].1, m[5].1, m[6].1, m[7].1);
    std::array::from_fn(|i| {
        if i < 4 {
            Vector(top_left[i], bottom_left[i])
        } else {
            Vector(top_right[i - 4], bottom_right[i - 4])
        }
    })
}
