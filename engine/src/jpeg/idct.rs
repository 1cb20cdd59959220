//! The inverse DCT, bit for bit libjpeg's accurate integer `jpeg_idct_islow`, so the pixel path
//! sees the same luma samples as `djpeg -grayscale` (the default `-dct int`).
//!
//! Like libjpeg on 64-bit Linux (its `JLONG` is `long`), the passes compute in 64 bits and keep
//! the intermediate rows in 32: hostile coefficients and 16-bit quantization tables can
//! overflow 32-bit products (the fuzzer found one), and must give garbage pixels, not a panic.
//!
//! Vector twins run the same passes in 32-bit lanes, for every block whose bounds prove 32 bits
//! exact, which is every block of a real photo: AVX2 on x86_64 (where the CPU has it), NEON on
//! aarch64 (which has no 64-bit lane multiply for the reference's arithmetic). Property tests
//! prove them equal to the reference (the NEON one under qemu, by `scripts/test-arm64.sh`).

use super::decoder::Block;
use super::islow::*;
use super::tables::{NATURAL, QuantTable};

/// libjpeg's post-IDCT range limit: adds 128 and clamps, indexed by the value masked to 10 bits
/// (so wildly out-of-range values from corrupt data wrap exactly as libjpeg's do).
fn range_limit() -> &'static [u8; 1024] {
    static TABLE: std::sync::OnceLock<[u8; 1024]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|i| match i {
            0..128 => (i + 128) as u8,
            128..512 => 255,
            512..896 => 0,
            _ => (i - 896) as u8,
        })
    })
}

/// One 1-D pass over 8 values; returns the 8 outputs before their final descale.
#[inline(always)]
fn butterfly<T: Sample>(v: [T; 8]) -> [T; 8] {
    // Even part.
    let (z2, z3) = (v[2], v[6]);
    let z1 = (z2 + z3).times(FIX_0_541196100);
    let tmp2 = z1 + z3.times(-FIX_1_847759065);
    let tmp3 = z1 + z2.times(FIX_0_765366865);
    let (z2, z3) = (v[0], v[4]);
    let tmp0 = (z2 + z3).shl(CONST_BITS);
    let tmp1 = (z2 - z3).shl(CONST_BITS);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4).times(FIX_1_175875602);
    let (t0, t1, t2, t3) = (
        t0.times(FIX_0_298631336),
        t1.times(FIX_2_053119869),
        t2.times(FIX_3_072711026),
        t3.times(FIX_1_501321110),
    );
    let (z1, z2) = (z1.times(-FIX_0_899976223), z2.times(-FIX_2_562915447));
    let (z3, z4) = (
        z3.times(-FIX_1_961570560) + z5,
        z4.times(-FIX_0_390180644) + z5,
    );
    let (t0, t1, t2, t3) = (t0 + z1 + z3, t1 + z2 + z4, t2 + z2 + z3, t3 + z1 + z4);
    [
        tmp10 + t3,
        tmp11 + t2,
        tmp12 + t1,
        tmp13 + t0,
        tmp13 - t0,
        tmp12 - t1,
        tmp11 - t2,
        tmp10 - t3,
    ]
}

/// The largest input magnitude for which one [`butterfly`] pass and its rounding stay inside
/// 32 bits, so that 32-bit lanes compute exactly what the 64-bit reference computes (a test
/// proves it from the pass's own arithmetic). Real photos' blocks stay far below it (dequantized
/// coefficients of 8-bit samples are within about +-1100, the rows between the passes within
/// a few thousand); blocks above it, which only corrupt or hostile files hold, take the 64-bit
/// reference.
const EXACT_IN_32_BITS: u32 = 12_000;

/// Dequantizes `block` (zigzag) with `quant` (zigzag) into natural order. Every product fits in
/// 32 bits: `-2^15 * 65535 >= -2^31`.
#[inline(always)]
fn dequantize(block: &Block, quant: &QuantTable) -> [i32; 64] {
    let mut coef = [0i32; 64];
    if block.mask == u64::MAX {
        for (k, &natural) in NATURAL.iter().enumerate() {
            coef[usize::from(natural)] = i32::from(block.coef[k]) * i32::from(quant[k]);
        }
    } else {
        let mut mask = block.mask | 1;
        while mask != 0 {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            coef[usize::from(NATURAL[k])] = i32::from(block.coef[k]) * i32::from(quant[k]);
        }
    }
    coef
}

/// Dequantizes `block` (zigzag) with `quant` (zigzag) and writes its 8x8 samples to `out`, rows
/// `stride` bytes apart. The one dispatch point: AVX2 on x86_64 (where the CPU has it) and NEON
/// on aarch64 where the block's bounds allow ([`EXACT_IN_32_BITS`]), the 64-bit reference
/// everywhere else.
pub(crate) fn idct_block(block: &Block, quant: &QuantTable, out: &mut [u8], stride: usize) {
    let coef = dequantize(block, quant);
    #[cfg(target_arch = "x86_64")]
    if crate::SimdPath::detect() == crate::SimdPath::Avx2
        // SAFETY: the CPU reported AVX2.
        && unsafe { avx2::transform(&coef, out, stride) }
    {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if neon::transform(&coef, out, stride) {
        return;
    }
    scalar(&coef, out, stride);
}

/// The transform in AVX2 registers, eight columns (then eight rows) at once: the same
/// [`butterfly`] as the reference in 32-bit lanes, with two 8x8 transposes; the NEON twin's
/// steps, one register a row.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::super::islow::*;
    use super::super::x86::{Vector, transpose};
    use super::{EXACT_IN_32_BITS, butterfly};
    use std::arch::x86_64::*;

    /// Whether every lane's magnitude is at most [`EXACT_IN_32_BITS`] (`i32::MIN`, whose
    /// absolute value wraps to itself, reads as 2^31 and fails).
    #[inline(always)]
    unsafe fn within_exact_range(m: &[Vector; 8]) -> bool {
        unsafe {
            let limit = _mm256_set1_epi32(EXACT_IN_32_BITS as i32);
            let largest = m.iter().fold(_mm256_setzero_si256(), |acc, v| {
                _mm256_max_epu32(acc, _mm256_abs_epi32(v.0))
            });
            let within = _mm256_cmpeq_epi32(_mm256_max_epu32(largest, limit), limit);
            _mm256_movemask_epi8(within) == -1
        }
    }

    /// Writes the block's samples and returns true, or returns false without writing when the
    /// coefficients or the rows between the passes are beyond [`EXACT_IN_32_BITS`].
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transform(coef: &[i32; 64], out: &mut [u8], stride: usize) -> bool {
        // SAFETY (the blocks below): AVX2 is enabled here; each load reads one row's eight
        // values, each store writes one output row's eight bytes.
        let rows: [Vector; 8] = std::array::from_fn(|r| unsafe {
            Vector(_mm256_loadu_si256(coef[r * 8..r * 8 + 8].as_ptr().cast()))
        });
        if !unsafe { within_exact_range(&rows) } {
            return false;
        }
        let work = butterfly(rows).map(|x| x.descale(CONST_BITS - PASS1_BITS));
        if !unsafe { within_exact_range(&work) } {
            return false;
        }
        let samples = transpose(butterfly(transpose(work)));
        for (r, v) in samples.into_iter().enumerate() {
            let line = &mut out[r * stride..r * stride + 8];
            unsafe {
                // libjpeg's range limit, computed: the final descale, the value sign-extended
                // from 10 bits (the table's index is its low 10 bits), plus 128, saturated.
                let rounded =
                    _mm256_add_epi32(v.0, _mm256_set1_epi32(1 << (CONST_BITS + PASS1_BITS + 2)));
                let descaled =
                    _mm256_srai_epi32::<{ (CONST_BITS + PASS1_BITS + 3) as i32 }>(rounded);
                let wrapped = _mm256_srai_epi32::<22>(_mm256_slli_epi32::<22>(descaled));
                let level = _mm256_add_epi32(wrapped, _mm256_set1_epi32(128));
                let words = _mm_packs_epi32(
                    _mm256_castsi256_si128(level),
                    _mm256_extracti128_si256::<1>(level),
                );
                _mm_storel_epi64(line.as_mut_ptr().cast(), _mm_packus_epi16(words, words));
            }
        }
        true
    }
}

/// The reference: `jpeg_idct_islow` one column, then one row, at a time, in 64 bits.
fn scalar(coef: &[i32; 64], out: &mut [u8], stride: usize) {
    let mut work = [0i32; 64];
    for col in 0..8 {
        let out = butterfly(std::array::from_fn(|row| i64::from(coef[row * 8 + col])));
        for (row, x) in out.into_iter().enumerate() {
            // libjpeg's workspace is `int`: the row values are kept in 32 bits.
            work[row * 8 + col] = descale(x, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    let limit = range_limit();
    for row in 0..8 {
        let line = &mut out[row * stride..row * stride + 8];
        let pass = butterfly(std::array::from_fn(|col| i64::from(work[row * 8 + col])));
        for (o, x) in line.iter_mut().zip(pass) {
            *o = limit[(descale(x, CONST_BITS + PASS1_BITS + 3) & 1023) as usize];
        }
    }
}

/// The transform in NEON registers, eight columns (then eight rows) at once: the same
/// [`butterfly`] as the reference, in 32-bit lanes, with two 8x8 transposes.
///
/// SAFETY (every `unsafe` block below that only computes): NEON is part of the
/// aarch64-unknown-linux-gnu target's baseline, so every CPU this code is built for has it; the
/// intrinsics are unsafe to call only because this code does not repeat that as a
/// `#[target_feature]` (which trait methods cannot carry).
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::super::islow::*;
    use super::super::neon::{Vector, transpose};
    use super::{EXACT_IN_32_BITS, butterfly};
    use std::arch::aarch64::*;

    /// Whether every lane's magnitude is at most [`EXACT_IN_32_BITS`] (`i32::MIN`, whose
    /// absolute value wraps to itself, reads as 2^31 and fails).
    #[inline(always)]
    fn within_exact_range(m: &[Vector; 8]) -> bool {
        unsafe {
            let magnitude = |x: int32x4_t| vreinterpretq_u32_s32(vabsq_s32(x));
            let largest = m.iter().fold(vdupq_n_u32(0), |acc, v| {
                vmaxq_u32(acc, vmaxq_u32(magnitude(v.0), magnitude(v.1)))
            });
            vmaxvq_u32(largest) <= EXACT_IN_32_BITS
        }
    }

    /// The final descale and libjpeg's range limit for four samples: the limit table's index
    /// is the descaled value's low 10 bits, which is the value sign-extended from 10 bits, plus
    /// 128, clamped to 0..=255 (the reference's table, computed).
    #[inline(always)]
    fn range_limit(x: int32x4_t) -> uint16x4_t {
        unsafe {
            let rounded = vaddq_s32(x, vdupq_n_s32(1 << (CONST_BITS + PASS1_BITS + 2)));
            let descaled = vshrq_n_s32::<{ (CONST_BITS + PASS1_BITS + 3) as i32 }>(rounded);
            let wrapped = vshrq_n_s32::<22>(vshlq_n_s32::<22>(descaled));
            vqmovun_s32(vaddq_s32(wrapped, vdupq_n_s32(128)))
        }
    }

    /// Writes the block's samples and returns true, or returns false without writing when the
    /// coefficients or the rows between the passes are beyond [`EXACT_IN_32_BITS`] (the caller
    /// then runs the 64-bit reference).
    pub(super) fn transform(coef: &[i32; 64], out: &mut [u8], stride: usize) -> bool {
        let rows: [Vector; 8] = std::array::from_fn(|r| {
            let row = &coef[r * 8..r * 8 + 8];
            // SAFETY: each load reads four of the row's eight values (and NEON, as above).
            unsafe { Vector(vld1q_s32(row.as_ptr()), vld1q_s32(row.as_ptr().add(4))) }
        });
        if !within_exact_range(&rows) {
            return false;
        }
        let work = butterfly(rows).map(|x| x.descale(CONST_BITS - PASS1_BITS));
        if !within_exact_range(&work) {
            return false;
        }
        let samples = transpose(butterfly(transpose(work)));
        for (r, v) in samples.into_iter().enumerate() {
            let line = &mut out[r * stride..r * stride + 8];
            // SAFETY: `line` holds the eight bytes stored (and NEON, as above).
            unsafe {
                let bytes = vqmovn_u16(vcombine_u16(range_limit(v.0), range_limit(v.1)));
                vst1_u8(line.as_mut_ptr(), bytes);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An upper bound of a value's magnitude, pushed through a pass's arithmetic.
    #[derive(Clone, Copy)]
    struct Bound(i64);

    impl std::ops::Add for Bound {
        type Output = Bound;
        fn add(self, other: Bound) -> Bound {
            Bound(self.0 + other.0)
        }
    }

    // A difference's magnitude is bounded by the sum of its operands' magnitudes.
    #[allow(clippy::suspicious_arithmetic_impl)]
    impl std::ops::Sub for Bound {
        type Output = Bound;
        fn sub(self, other: Bound) -> Bound {
            Bound(self.0 + other.0)
        }
    }

    impl Sample for Bound {
        fn times(self, c: i64) -> Bound {
            Bound(self.0 * c.abs())
        }
        fn shl(self, n: i64) -> Bound {
            Bound(self.0 << n)
        }
        fn descale(self, _: i64) -> Bound {
            unreachable!("the butterfly does not descale")
        }
    }

    #[test]
    fn inputs_up_to_the_exact_range_keep_every_pass_inside_32_bits() {
        // Every intermediate value of the butterfly reaches some output through additions only
        // after its last multiply, so the outputs' bounds cover the intermediates' too; the
        // largest rounding term added afterwards is the final descale's 2^17.
        let largest = butterfly([Bound(i64::from(EXACT_IN_32_BITS)); 8])
            .iter()
            .map(|b| b.0)
            .max()
            .expect("eight outputs");
        let rounding = 1 << (CONST_BITS + PASS1_BITS + 2);
        assert!(
            largest + rounding <= i64::from(i32::MAX),
            "bound {largest} + {rounding} over 2^31 - 1"
        );
    }

    /// A block's coefficients in `coef_range` (zigzag; the decoder keeps every one outside the
    /// mask zero), its mask at every density (all set, as sequential decoding leaves it, or
    /// random), and a quantization table of steps in `quant_range`.
    fn blocks(
        coef_range: std::ops::RangeInclusive<i16>,
        quant_range: std::ops::RangeInclusive<u16>,
    ) -> impl Strategy<Value = (Vec<i16>, u64, QuantTable)> {
        (
            proptest::collection::vec(coef_range, 64),
            prop_oneof![Just(u64::MAX), any::<u64>()],
            proptest::collection::vec(quant_range, 64),
        )
            .prop_map(|(mut coef, mask, quant)| {
                for (k, c) in coef.iter_mut().enumerate() {
                    if k > 0 && mask >> k & 1 == 0 {
                        *c = 0;
                    }
                }
                (coef, mask, quant.try_into().expect("64 steps"))
            })
    }

    /// `idct_block` (the dispatch: NEON on aarch64) against the reference, into a buffer wider
    /// than the block so a stray store would show.
    fn check(coef: &[i16], mask: u64, quant: &QuantTable) -> Result<(), TestCaseError> {
        let mut block = Block::ZERO;
        block.coef.copy_from_slice(coef);
        block.mask = mask;
        let (mut got, mut want) = ([7u8; 16 * 8], [7u8; 16 * 8]);
        idct_block(&block, quant, &mut got, 16);
        scalar(&dequantize(&block, quant), &mut want, 16);
        prop_assert_eq!(got, want);
        Ok(())
    }

    proptest! {
        /// Photo-like blocks: what the vector path runs on.
        #[test]
        fn the_dispatched_idct_equals_the_reference_on_photo_blocks(
            (coef, mask, quant) in blocks(-1024..=1023, 1..=16),
        ) {
            check(&coef, mask, &quant)?;
        }

        /// Blocks around the exact range's edge: sums that wrap libjpeg's range limit, and some
        /// past the edge, which must fall back.
        #[test]
        fn the_dispatched_idct_equals_the_reference_near_the_32_bit_edge(
            (coef, mask, quant) in blocks(-2047..=2047, 1..=8),
        ) {
            check(&coef, mask, &quant)?;
        }

        /// Hostile blocks (any coefficient, 16-bit steps): the reference's wrapping.
        #[test]
        fn the_dispatched_idct_equals_the_reference_on_hostile_blocks(
            (coef, mask, quant) in blocks(i16::MIN..=i16::MAX, 0..=u16::MAX),
        ) {
            check(&coef, mask, &quant)?;
        }
    }

    /// The AVX2 path must really run on photo blocks, and leave hostile ones untouched (as the
    /// NEON one, below).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_takes_photo_blocks_and_leaves_hostile_ones() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            crate::luma::note_untested_without("AVX2", "inverse DCT");
            return;
        }
        let (photo, hostile) = (photo_block(), hostile_blocks());
        let mut pixels = [0u8; 64];
        // SAFETY: the CPU reported AVX2.
        assert!(unsafe { avx2::transform(&photo, &mut pixels, 8) });
        let mut want = [0u8; 64];
        scalar(&photo, &mut want, 8);
        assert_eq!(pixels, want);
        for block in hostile {
            let mut untouched = [7u8; 64];
            // SAFETY: as above.
            assert!(!unsafe { avx2::transform(&block, &mut untouched, 8) });
            assert_eq!(untouched, [7u8; 64]);
        }
    }

    /// A photo-like block: coefficients of a few hundred, DC 1016.
    fn photo_block() -> [i32; 64] {
        let mut photo = [0i32; 64];
        for (i, c) in photo.iter_mut().enumerate() {
            *c = ((i as i32 * 37) % 23 - 11) * 16;
        }
        photo[0] = 1016;
        photo
    }

    /// Blocks past [`EXACT_IN_32_BITS`]: the vector twins must leave them to the reference.
    fn hostile_blocks() -> [[i32; 64]; 3] {
        [
            [i32::from(i16::MAX) * 65535; 64],
            std::array::from_fn(|i| if i == 0 { i32::MIN + 32768 } else { 0 }),
            std::array::from_fn(|i| {
                if i == 9 {
                    EXACT_IN_32_BITS as i32 + 1
                } else {
                    0
                }
            }),
        ]
    }

    /// The NEON path must really run on photo blocks (an equality test alone would also pass
    /// if it always fell back), and must leave hostile ones to the reference untouched.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_takes_photo_blocks_and_leaves_hostile_ones() {
        let photo = photo_block();
        let mut pixels = [0u8; 64];
        assert!(neon::transform(&photo, &mut pixels, 8));
        let mut want = [0u8; 64];
        scalar(&photo, &mut want, 8);
        assert_eq!(pixels, want);
        for hostile in hostile_blocks() {
            let mut untouched = [7u8; 64];
            assert!(!neon::transform(&hostile, &mut untouched, 8));
            assert_eq!(untouched, [7u8; 64]);
        }
    }

    #[test]
    fn a_flat_block_decodes_to_its_level() {
        // DC 8 * (level - 128), as the forward DCT makes it, with step 1.
        let mut block = Block::ZERO;
        block.coef[0] = 8 * (200 - 128);
        block.mask = 1;
        let mut pixels = [0u8; 64];
        idct_block(&block, &[1; 64], &mut pixels, 8);
        assert_eq!(pixels, [200u8; 64]);
    }
}
