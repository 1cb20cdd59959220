//! The forward DCT and quantization of the pixel path, bit for bit libjpeg-turbo's
//! `jpeg_fdct_islow` and its reciprocal quantizer, so that encoding a luma plane here gives the
//! coefficients `cjpeg -grayscale -dct int` gives.

use super::decoder::Block;
use super::islow::*;
use super::tables::{NATURAL, QuantTable};

/// Eight samples, one per row (or column) of a block, worked on together.
#[derive(Clone, Copy)]
struct Lanes([i32; 8]);

impl Lanes {
    #[inline(always)]
    fn map(self, f: impl Fn(i32) -> i32) -> Lanes {
        let mut out = [0; 8];
        for (o, x) in out.iter_mut().zip(self.0) {
            *o = f(x);
        }
        Lanes(out)
    }

    #[inline(always)]
    fn zip(self, other: Lanes, f: impl Fn(i32, i32) -> i32) -> Lanes {
        let mut out = [0; 8];
        for ((o, a), b) in out.iter_mut().zip(self.0).zip(other.0) {
            *o = f(a, b);
        }
        Lanes(out)
    }
}

impl std::ops::Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(self, other: Lanes) -> Lanes {
        self.zip(other, |a, b| a + b)
    }
}

impl std::ops::Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(self, other: Lanes) -> Lanes {
        self.zip(other, |a, b| a - b)
    }
}

impl Sample for Lanes {
    #[inline(always)]
    fn times(self, c: i64) -> Lanes {
        self.map(|x| x * c as i32)
    }
    #[inline(always)]
    fn shl(self, n: i64) -> Lanes {
        self.map(|x| x << n)
    }
    #[inline(always)]
    fn descale(self, n: i64) -> Lanes {
        self.map(|x| (x + (1 << (n - 1))) >> n)
    }
}

/// One 1-D pass of `jpeg_fdct_islow`: 8 inputs to 8 outputs; `even` scales the two outputs
/// that need no multiply, `descale_bits` descales the others (the two passes differ only there).
#[inline(always)]
fn pass<T: Sample>(d: [T; 8], even: impl Fn(T) -> T, descale_bits: i64) -> [T; 8] {
    let (tmp0, tmp7) = (d[0] + d[7], d[0] - d[7]);
    let (tmp1, tmp6) = (d[1] + d[6], d[1] - d[6]);
    let (tmp2, tmp5) = (d[2] + d[5], d[2] - d[5]);
    let (tmp3, tmp4) = (d[3] + d[4], d[3] - d[4]);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    let z1 = (tmp12 + tmp13).times(FIX_0_541196100);
    let (z1o, z2, z3, z4) = (tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7);
    let z5 = (z3 + z4).times(FIX_1_175875602);
    let (t4, t5, t6, t7) = (
        tmp4.times(FIX_0_298631336),
        tmp5.times(FIX_2_053119869),
        tmp6.times(FIX_3_072711026),
        tmp7.times(FIX_1_501321110),
    );
    let (z1o, z2) = (z1o.times(-FIX_0_899976223), z2.times(-FIX_2_562915447));
    let (z3, z4) = (
        z3.times(-FIX_1_961570560) + z5,
        z4.times(-FIX_0_390180644) + z5,
    );
    [
        even(tmp10 + tmp11),
        (t7 + z1o + z4).descale(descale_bits),
        (z1 + tmp13.times(FIX_0_765366865)).descale(descale_bits),
        (t6 + z2 + z3).descale(descale_bits),
        even(tmp10 - tmp11),
        (t5 + z2 + z4).descale(descale_bits),
        (z1 + tmp12.times(-FIX_1_847759065)).descale(descale_bits),
        (t4 + z1o + z3).descale(descale_bits),
    ]
}

/// libjpeg-turbo's reciprocal division by `8 * step` with rounding (`compute_reciprocal`):
/// `(reciprocal, correction, shift)` with `q = ((x + correction) * reciprocal) >> (16 + shift)`.
#[derive(Clone, Copy)]
struct Divisor {
    reciprocal: u32,
    correction: u32,
    shift: u32,
}

impl Divisor {
    /// `step` 1 to 255, as in every table this engine writes (baseline, 8-bit).
    fn new(step: u16) -> Divisor {
        debug_assert!((1..=255).contains(&step), "quantization step {step}");
        let divisor = u32::from(step) * 8;
        if divisor == 1 {
            return Divisor {
                reciprocal: 1,
                correction: 0,
                shift: 0,
            };
        }
        let b = 31 - divisor.leading_zeros(); // floor(log2)
        let mut r = 16 + b;
        let mut fq = (1u64 << r) / u64::from(divisor);
        let fr = (1u64 << r) % u64::from(divisor);
        let mut c = divisor / 2;
        if fr == 0 {
            fq >>= 1;
            r -= 1;
        } else if fr <= u64::from(divisor / 2) {
            c += 1;
        } else {
            fq += 1;
        }
        Divisor {
            reciprocal: fq as u32,
            correction: c,
            shift: r - 16,
        }
    }

    #[inline(always)]
    #[cfg(test)]
    fn divide(self, x: i32) -> i32 {
        let sum = u64::from(x.unsigned_abs() + self.correction);
        let q = ((sum * u64::from(self.reciprocal)) >> (16 + self.shift)) as i32;
        if x < 0 { -q } else { q }
    }
}

/// The quantizer for one output table, and the forward DCT this CPU runs best.
pub(crate) struct Quantizer {
    /// By natural index.
    divisors: [Divisor; 64],
    /// The same, a row of eight at a time, for the AVX2 and NEON transforms.
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    vector_divisors: [RowDivisors; 8],
    transform: Transform,
}

/// One row of divisors as vectors take them; `shift` includes the 16.
#[derive(Clone, Copy)]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(dead_code)
)]
struct RowDivisors {
    reciprocal: [u32; 8],
    correction: [u32; 8],
    shift: [u32; 8],
}

/// A forward DCT and quantization of one block: `(pixels, stride, quantizer, block)`.
type Transform = fn(&[u8], usize, &Quantizer, &mut Block);

impl Quantizer {
    /// `table` in zigzag order, as written to the file; steps 1 to 255 (the 32-bit quantizer
    /// relies on it).
    pub fn new(table: &QuantTable) -> Quantizer {
        let mut divisors = [Divisor {
            reciprocal: 1,
            correction: 0,
            shift: 0,
        }; 64];
        for (k, &step) in table.iter().enumerate() {
            divisors[usize::from(NATURAL[k])] = Divisor::new(step);
        }
        // NEON is every aarch64 CPU's; AVX2 is detected.
        #[cfg(target_arch = "aarch64")]
        let transform: Transform = neon;
        #[cfg(not(target_arch = "aarch64"))]
        let transform: Transform = match crate::SimdPath::detect() {
            #[cfg(target_arch = "x86_64")]
            crate::SimdPath::Avx2 => avx2_detected,
            _ => lanes,
        };
        let vector_divisors = std::array::from_fn(|u| RowDivisors {
            reciprocal: std::array::from_fn(|v| divisors[u * 8 + v].reciprocal),
            correction: std::array::from_fn(|v| divisors[u * 8 + v].correction),
            shift: std::array::from_fn(|v| 16 + divisors[u * 8 + v].shift),
        });
        Quantizer {
            divisors,
            vector_divisors,
            transform,
        }
    }
}

/// Transforms and quantizes the 8x8 samples at `pixels` (rows `stride` apart) into `block`.
#[inline(always)]
pub(crate) fn fdct_block(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    (quantizer.transform)(pixels, stride, quantizer, block);
}

/// The reference the vector version is tested against: one row, then one column, at a time,
/// dividing in 64 bits.
#[cfg(test)]
fn scalar(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    let mut data = [0i32; 64];
    for row in 0..8 {
        let line: [i32; 8] = std::array::from_fn(|c| i32::from(pixels[row * stride + c]) - 128);
        let out = pass(line, |x| x << PASS1_BITS, CONST_BITS - PASS1_BITS);
        data[row * 8..row * 8 + 8].copy_from_slice(&out);
    }
    for col in 0..8 {
        let column: [i32; 8] = std::array::from_fn(|r| data[r * 8 + col]);
        let out = pass(column, |x| x.descale(PASS1_BITS), CONST_BITS + PASS1_BITS);
        for (r, v) in out.into_iter().enumerate() {
            data[r * 8 + col] = v;
        }
    }
    store(
        &std::array::from_fn(|i| quantizer.divisors[i].divide(data[i])),
        block,
    );
}

/// Writes quantized coefficients (natural order) to `block` in zigzag order with their mask.
#[inline(always)]
fn store(natural: &[i32; 64], block: &mut Block) {
    let mut mask = 0u64;
    for (k, &i) in NATURAL.iter().enumerate() {
        let q = natural[usize::from(i)];
        block.coef[k] = q as i16;
        mask |= u64::from(q != 0) << k;
    }
    block.mask = mask;
}

/// All eight rows at once, then all eight columns at once; the same arithmetic as [`scalar`].
/// Portable: the compiler vectorizes it on x86_64 without AVX2 (SSE2); on aarch64 it stays
/// scalar (docs/engine-speed.md), so [`neon`] runs there.
#[cfg_attr(target_arch = "aarch64", allow(dead_code))]
fn lanes(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    // Column j of the block across the eight rows: pass 1 transforms every row at once.
    let columns: [Lanes; 8] = std::array::from_fn(|j| {
        Lanes(std::array::from_fn(|r| {
            i32::from(pixels[r * stride + j]) - 128
        }))
    });
    let by_frequency = pass(columns, |x| x.shl(PASS1_BITS), CONST_BITS - PASS1_BITS);
    // Transpose: row r's eight horizontal frequencies, so pass 2 transforms every column at once.
    let rows: [Lanes; 8] =
        std::array::from_fn(|r| Lanes(std::array::from_fn(|k| by_frequency[k].0[r])));
    let out = pass(rows, |x| x.descale(PASS1_BITS), CONST_BITS + PASS1_BITS);
    let mut natural = [0i32; 64];
    for (u, lanes) in out.iter().enumerate() {
        for (v, &x) in lanes.0.iter().enumerate() {
            let d = &quantizer.divisors[u * 8 + v];
            // (|x| + correction) * reciprocal stays below 2^30: |x| <= 8192 (8-bit samples),
            // correction <= 1021 and reciprocal <= 2^16 (steps up to 255).
            let q = ((x.unsigned_abs() + d.correction) * d.reciprocal) >> (16 + d.shift);
            natural[u * 8 + v] = if x < 0 { -(q as i32) } else { q as i32 };
        }
    }
    store(&natural, block);
}

/// Only ever chosen after the CPU reported AVX2.
#[cfg(target_arch = "x86_64")]
fn avx2_detected(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    // SAFETY: `Quantizer::new` picks this function only when the CPU has AVX2.
    unsafe { avx2(pixels, stride, quantizer, block) }
}

/// The transform with the eight lanes in one AVX2 register: the same passes as [`lanes`] and
/// [`scalar`] (shared through [`Sample`]), two 8x8 transposes, and the quantization in vectors.
///
/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    use super::x86::{Vector, transpose};
    use std::arch::x86_64::*;
    let rows: [Vector; 8] = std::array::from_fn(|r| {
        let line = &pixels[r * stride..r * stride + 8];
        // SAFETY: `line` holds the 8 bytes read; AVX2 is enabled here.
        unsafe {
            let bytes = _mm_loadl_epi64(line.as_ptr().cast());
            Vector(_mm256_sub_epi32(
                _mm256_cvtepu8_epi32(bytes),
                _mm256_set1_epi32(128),
            ))
        }
    });
    let by_frequency = pass(
        transpose(rows),
        |x| x.shl(PASS1_BITS),
        CONST_BITS - PASS1_BITS,
    );
    let out = pass(
        transpose(by_frequency),
        |x| x.descale(PASS1_BITS),
        CONST_BITS + PASS1_BITS,
    );
    let mut natural = [0i32; 64];
    for (u, row) in out.iter().enumerate() {
        let divisors = &quantizer.vector_divisors[u];
        // SAFETY: the loads read 8 lanes of 8-lane arrays, the store writes 8 of `natural`'s 64;
        // AVX2 is enabled here.
        unsafe {
            let load = |v: &[u32; 8]| _mm256_loadu_si256(v.as_ptr().cast());
            let magnitude = _mm256_add_epi32(_mm256_abs_epi32(row.0), load(&divisors.correction));
            let product = _mm256_mullo_epi32(magnitude, load(&divisors.reciprocal));
            let q = _mm256_srlv_epi32(product, load(&divisors.shift));
            let signed = _mm256_sign_epi32(q, row.0);
            _mm256_storeu_si256(natural[u * 8..].as_mut_ptr().cast(), signed);
        }
    }
    store(&natural, block);
}

/// The transform in NEON registers: the same passes as [`lanes`] and [`scalar`] (through
/// [`Sample`]) on eight 32-bit lanes in two registers, the shared 8x8 transposes, and the
/// quantization in vectors (libjpeg-turbo's reciprocal: magnitude plus correction, times the
/// reciprocal, shifted; the sign put back).
///
/// SAFETY (the `unsafe` blocks): NEON is part of the aarch64 target's baseline (see
/// `jpeg::neon`); the loads and stores stay within the slices they are given.
#[cfg(target_arch = "aarch64")]
fn neon(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    use super::neon::{Vector, transpose};
    use std::arch::aarch64::*;
    let rows: [Vector; 8] = std::array::from_fn(|r| {
        let line = &pixels[r * stride..r * stride + 8];
        unsafe {
            let centred = vsubq_s16(
                vreinterpretq_s16_u16(vmovl_u8(vld1_u8(line.as_ptr()))),
                vdupq_n_s16(128),
            );
            Vector(vmovl_s16(vget_low_s16(centred)), vmovl_high_s16(centred))
        }
    });
    let by_frequency = pass(
        transpose(rows),
        |x| x.shl(PASS1_BITS),
        CONST_BITS - PASS1_BITS,
    );
    let out = pass(
        transpose(by_frequency),
        |x| x.descale(PASS1_BITS),
        CONST_BITS + PASS1_BITS,
    );
    let mut natural = [0i32; 64];
    for (u, row) in out.iter().enumerate() {
        let divisors = &quantizer.vector_divisors[u];
        for (half, x) in [(0, row.0), (4, row.1)] {
            unsafe {
                let load = |v: &[u32; 8]| vld1q_u32(v[half..].as_ptr());
                let magnitude = vaddq_u32(
                    vreinterpretq_u32_s32(vabsq_s32(x)),
                    load(&divisors.correction),
                );
                let product = vmulq_u32(magnitude, load(&divisors.reciprocal));
                // A shift by a negative count is a shift right.
                let right = vnegq_s32(vreinterpretq_s32_u32(load(&divisors.shift)));
                let q = vreinterpretq_s32_u32(vshlq_u32(product, right));
                let sign = vshrq_n_s32::<31>(x);
                let signed = vsubq_s32(veorq_s32(q, sign), sign);
                vst1q_s32(natural[u * 8 + half..].as_mut_ptr(), signed);
            }
        }
    }
    store(&natural, block);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reciprocal_division_rounds_to_nearest_for_real_coefficients() {
        // Within the FDCT's output range the reciprocal equals rounded division.
        for step in [1u16, 2, 3, 5, 7, 10, 16, 30, 99, 255] {
            let d = Divisor::new(step);
            let divisor = i32::from(step) * 8;
            for x in -8192i32..=8191 {
                let want = (x.abs() + divisor / 2) / divisor * x.signum();
                assert_eq!(d.divide(x), want, "x {x} step {step}");
            }
        }
    }

    /// Every transform this CPU can run.
    fn kernels() -> Vec<(&'static str, Transform)> {
        // Only x86_64 adds kernels to the list.
        #[cfg_attr(
            not(any(target_arch = "x86_64", target_arch = "aarch64")),
            allow(unused_mut)
        )]
        let mut kernels: Vec<(&str, Transform)> = vec![("portable", lanes)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            kernels.push(("avx2", avx2_detected));
        } else {
            crate::luma::note_untested_without("AVX2", "forward DCT");
        }
        #[cfg(target_arch = "aarch64")]
        kernels.push(("neon", neon));
        kernels
    }

    proptest::proptest! {
        #[test]
        fn the_vector_transform_equals_the_scalar_reference(
            pixels in proptest::collection::vec(proptest::prelude::any::<u8>(), 8 * 11),
            quality in 1u8..=100,
        ) {
            let quantizer = Quantizer::new(&super::super::tables::luminance_table(quality));
            let (mut want, mut got) = (Block::ZERO, Block::ZERO);
            scalar(&pixels, 11, &quantizer, &mut want);
            for (name, kernel) in kernels() {
                kernel(&pixels, 11, &quantizer, &mut got);
                proptest::prop_assert_eq!(got.coef, want.coef, "{}", name);
                proptest::prop_assert_eq!(got.mask, want.mask, "{}", name);
            }
        }
    }

    #[test]
    fn extremes_equal_the_scalar_reference() {
        let quantizer = Quantizer::new(&[1; 64]);
        for pattern in [
            [0u8; 64],
            [255; 64],
            std::array::from_fn(|i| if (i / 8 + i) % 2 == 0 { 0 } else { 255 }),
        ] {
            let (mut want, mut got) = (Block::ZERO, Block::ZERO);
            scalar(&pattern, 8, &quantizer, &mut want);
            for (name, kernel) in kernels() {
                kernel(&pattern, 8, &quantizer, &mut got);
                assert_eq!(got.coef, want.coef, "{name}");
                assert_eq!(got.mask, want.mask, "{name}");
            }
        }
    }

    #[test]
    fn a_flat_block_has_only_dc() {
        let pixels = [200u8; 64];
        let quantizer = Quantizer::new(&[1; 64]);
        let mut block = Block::ZERO;
        fdct_block(&pixels, 8, &quantizer, &mut block);
        // The DC of a flat block is 8 times its level-shifted value: 8 * (200 - 128).
        assert_eq!(block.coef[0], 576);
        assert_eq!(block.mask, 1);
    }
}
