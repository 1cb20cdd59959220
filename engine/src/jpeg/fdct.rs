//! The forward DCT and quantization of the pixel path, bit for bit libjpeg-turbo's
//! `jpeg_fdct_islow` and its reciprocal quantizer, so that encoding a luma plane here gives the
//! coefficients `cjpeg -grayscale -dct int` gives.

use super::decoder::Block;
use super::islow::*;
use super::tables::{NATURAL, QuantTable};

/// One 1-D pass: 8 inputs to 8 outputs; `even_shift` scales the two outputs with no multiply,
/// `descale_bits` descales the others (pass 1 and pass 2 differ only there).
#[inline(always)]
fn pass(d: [i64; 8], even: impl Fn(i64) -> i64, descale_bits: i64) -> [i64; 8] {
    let (tmp0, tmp7) = (d[0] + d[7], d[0] - d[7]);
    let (tmp1, tmp6) = (d[1] + d[6], d[1] - d[6]);
    let (tmp2, tmp5) = (d[2] + d[5], d[2] - d[5]);
    let (tmp3, tmp4) = (d[3] + d[4], d[3] - d[4]);
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    let mut out = [0i64; 8];
    out[0] = even(tmp10 + tmp11);
    out[4] = even(tmp10 - tmp11);
    let z1 = (tmp12 + tmp13) * FIX_0_541196100;
    out[2] = descale(z1 + tmp13 * FIX_0_765366865, descale_bits);
    out[6] = descale(z1 + tmp12 * -FIX_1_847759065, descale_bits);
    let (z1, z2, z3, z4) = (tmp4 + tmp7, tmp5 + tmp6, tmp4 + tmp6, tmp5 + tmp7);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t4, t5, t6, t7) = (
        tmp4 * FIX_0_298631336,
        tmp5 * FIX_2_053119869,
        tmp6 * FIX_3_072711026,
        tmp7 * FIX_1_501321110,
    );
    let (z1, z2) = (z1 * -FIX_0_899976223, z2 * -FIX_2_562915447);
    let (z3, z4) = (z3 * -FIX_1_961570560 + z5, z4 * -FIX_0_390180644 + z5);
    out[7] = descale(t4 + z1 + z3, descale_bits);
    out[5] = descale(t5 + z2 + z4, descale_bits);
    out[3] = descale(t6 + z2 + z3, descale_bits);
    out[1] = descale(t7 + z1 + z4, descale_bits);
    out
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
    fn new(step: u16) -> Divisor {
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
    fn divide(self, x: i32) -> i32 {
        let sum = u64::from(x.unsigned_abs() + self.correction);
        let q = ((sum * u64::from(self.reciprocal)) >> (16 + self.shift)) as i32;
        if x < 0 { -q } else { q }
    }
}

/// The quantizer for one output table.
pub(crate) struct Quantizer {
    /// By natural index.
    divisors: [Divisor; 64],
}

impl Quantizer {
    /// `table` in zigzag order, as written to the file.
    pub fn new(table: &QuantTable) -> Quantizer {
        let mut divisors = [Divisor {
            reciprocal: 1,
            correction: 0,
            shift: 0,
        }; 64];
        for (k, &step) in table.iter().enumerate() {
            divisors[usize::from(NATURAL[k])] = Divisor::new(step);
        }
        Quantizer { divisors }
    }
}

/// Transforms and quantizes the 8x8 samples at `pixels` (rows `stride` apart) into `block`.
pub(crate) fn fdct_block(pixels: &[u8], stride: usize, quantizer: &Quantizer, block: &mut Block) {
    let mut data = [0i64; 64];
    for row in 0..8 {
        let line: [i64; 8] = std::array::from_fn(|c| i64::from(pixels[row * stride + c]) - 128);
        data[row * 8..row * 8 + 8].copy_from_slice(&pass(
            line,
            |x| x << PASS1_BITS,
            CONST_BITS - PASS1_BITS,
        ));
    }
    for col in 0..8 {
        let column: [i64; 8] = std::array::from_fn(|r| data[r * 8 + col]);
        let out = pass(column, |x| descale(x, PASS1_BITS), CONST_BITS + PASS1_BITS);
        for (r, v) in out.into_iter().enumerate() {
            data[r * 8 + col] = v;
        }
    }
    let mut mask = 0u64;
    for (k, &natural) in NATURAL.iter().enumerate() {
        let i = usize::from(natural);
        let q = quantizer.divisors[i].divide(data[i] as i32);
        block.coef[k] = q as i16;
        mask |= u64::from(q != 0) << k;
    }
    block.mask = mask;
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
