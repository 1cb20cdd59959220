//! The inverse DCT, bit for bit libjpeg's accurate integer `jpeg_idct_islow`, so the pixel path
//! sees the same luma samples as `djpeg -grayscale` (the default `-dct int`).
//!
//! Like libjpeg on 64-bit Linux (its `JLONG` is `long`), the passes compute in 64 bits and keep
//! the intermediate rows in 32: hostile coefficients and 16-bit quantization tables can
//! overflow 32-bit products (the fuzzer found one), and must give garbage pixels, not a panic.

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

/// One 1-D pass over 8 values `v(0..8)`; returns the 8 outputs before their final descale.
#[inline(always)]
fn butterfly(v: impl Fn(usize) -> i64) -> [i64; 8] {
    // Even part.
    let (z2, z3) = (v(2), v(6));
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let (z2, z3) = (v(0), v(4));
    let tmp0 = (z2 + z3) << CONST_BITS;
    let tmp1 = (z2 - z3) << CONST_BITS;
    let (tmp10, tmp13, tmp11, tmp12) = (tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (v(7), v(5), v(3), v(1));
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t0, t1, t2, t3) = (
        t0 * FIX_0_298631336,
        t1 * FIX_2_053119869,
        t2 * FIX_3_072711026,
        t3 * FIX_1_501321110,
    );
    let (z1, z2) = (z1 * -FIX_0_899976223, z2 * -FIX_2_562915447);
    let (z3, z4) = (z3 * -FIX_1_961570560 + z5, z4 * -FIX_0_390180644 + z5);
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

/// Dequantizes `block` (zigzag) with `quant` (zigzag) and writes its 8x8 samples to `out`, rows
/// `stride` bytes apart.
pub(crate) fn idct_block(block: &Block, quant: &QuantTable, out: &mut [u8], stride: usize) {
    let mut coef = [0i64; 64];
    if block.mask == u64::MAX {
        for (k, &natural) in NATURAL.iter().enumerate() {
            coef[usize::from(natural)] = i64::from(block.coef[k]) * i64::from(quant[k]);
        }
    } else {
        let mut mask = block.mask | 1;
        while mask != 0 {
            let k = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            coef[usize::from(NATURAL[k])] = i64::from(block.coef[k]) * i64::from(quant[k]);
        }
    }
    let mut work = [0i32; 64];
    for col in 0..8 {
        let v = |row: usize| coef[row * 8 + col];
        let out = butterfly(v);
        for (row, x) in out.into_iter().enumerate() {
            // libjpeg's workspace is `int`: the row values are kept in 32 bits.
            work[row * 8 + col] = descale(x, CONST_BITS - PASS1_BITS) as i32;
        }
    }
    let limit = range_limit();
    for row in 0..8 {
        let v = |col: usize| i64::from(work[row * 8 + col]);
        let line = &mut out[row * stride..row * stride + 8];
        for (o, x) in line.iter_mut().zip(butterfly(v)) {
            *o = limit[(descale(x, CONST_BITS + PASS1_BITS + 3) & 1023) as usize];
        }
    }
}
