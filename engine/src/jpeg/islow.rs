//! What libjpeg's accurate integer DCTs (`jfdctint.c`, `jidctint.c`) share: cosines in 13-bit
//! fixed point and the rounding shift. 64-bit, as libjpeg's `JLONG` is on 64-bit Linux.

pub(crate) const CONST_BITS: i64 = 13;
pub(crate) const PASS1_BITS: i64 = 2;
pub(crate) const FIX_0_298631336: i64 = 2446;
pub(crate) const FIX_0_390180644: i64 = 3196;
pub(crate) const FIX_0_541196100: i64 = 4433;
pub(crate) const FIX_0_765366865: i64 = 6270;
pub(crate) const FIX_0_899976223: i64 = 7373;
pub(crate) const FIX_1_175875602: i64 = 9633;
pub(crate) const FIX_1_501321110: i64 = 12299;
pub(crate) const FIX_1_847759065: i64 = 15137;
pub(crate) const FIX_1_961570560: i64 = 16069;
pub(crate) const FIX_2_053119869: i64 = 16819;
pub(crate) const FIX_2_562915447: i64 = 20995;
pub(crate) const FIX_3_072711026: i64 = 25172;

/// `x / 2^n`, rounded (libjpeg's `DESCALE`).
#[inline(always)]
pub(crate) fn descale(x: i64, n: i64) -> i64 {
    (x + (1 << (n - 1))) >> n
}

/// What a pass of either DCT computes with: one value (`i32` for the forward DCT's scalar
/// reference, `i64` for the inverse's) or eight side by side (the forward DCT's `Lanes`, which
/// the compiler turns into vector instructions, its `x86::Vector`, one AVX2 register, and the
/// inverse DCT's `neon::Vector`, two NEON registers), so that each pass's arithmetic is written
/// once. In the forward DCT 32 bits are enough: from 8-bit samples the largest intermediate is
/// below 2^30. The inverse DCT's vectors are 32-bit too, and used only on blocks whose bounds
/// prove it exact (see `idct::EXACT_IN_32_BITS`).
pub(crate) trait Sample:
    Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self>
{
    fn times(self, c: i64) -> Self;
    fn shl(self, n: i64) -> Self;
    fn descale(self, n: i64) -> Self;
}

#[cfg(test)]
impl Sample for i32 {
    #[inline(always)]
    fn times(self, c: i64) -> i32 {
        self * c as i32
    }
    #[inline(always)]
    fn shl(self, n: i64) -> i32 {
        self << n
    }
    #[inline(always)]
    fn descale(self, n: i64) -> i32 {
        descale(i64::from(self), n) as i32
    }
}

impl Sample for i64 {
    #[inline(always)]
    fn times(self, c: i64) -> i64 {
        self * c
    }
    #[inline(always)]
    fn shl(self, n: i64) -> i64 {
        self << n
    }
    #[inline(always)]
    fn descale(self, n: i64) -> i64 {
        descale(self, n)
    }
}
