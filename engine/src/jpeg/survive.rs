//! Which coefficients survive requantization, as a bit mask: one dispatch point over a scalar
//! reference, the `wide` kernel (NEON on aarch64, SSE2 on x86_64) and, on x86_64 CPUs that have
//! it, an AVX2 kernel chosen at run time. The encoder then visits only what it writes.

use crate::SimdPath;

/// Bit k set where `|coef[k]| > limit[k]`.
pub(crate) type Kernel = fn(&[i16; 64], &[i16; 64]) -> u64;

/// The fastest kernel this CPU runs.
pub(crate) fn kernel() -> Kernel {
    match SimdPath::detect() {
        #[cfg(target_arch = "x86_64")]
        SimdPath::Avx2 => avx2_detected,
        _ => portable,
    }
}

/// The reference the kernels are tested against.
#[cfg(test)]
fn scalar(coef: &[i16; 64], limit: &[i16; 64]) -> u64 {
    coef.iter()
        .zip(limit)
        .enumerate()
        .fold(0, |mask, (k, (&c, &l))| {
            mask | (u64::from(c.unsigned_abs() > l.unsigned_abs()) << k)
        })
}

fn portable(coef: &[i16; 64], limit: &[i16; 64]) -> u64 {
    use wide::i16x16;
    let mut mask = 0u64;
    for (i, (values, limits)) in coef
        .chunks_exact(16)
        .zip(limit.chunks_exact(16))
        .enumerate()
    {
        let v = i16x16::new(values.try_into().expect("16 lanes")).abs();
        let l = i16x16::new(limits.try_into().expect("16 lanes"));
        mask |= u64::from(v.simd_gt(l).to_bitmask()) << (16 * i);
    }
    mask
}

/// Only ever returned by [`kernel`] after the CPU reported AVX2.
#[cfg(target_arch = "x86_64")]
fn avx2_detected(coef: &[i16; 64], limit: &[i16; 64]) -> u64 {
    // SAFETY: this function is reachable only through `kernel`, which picks it when the CPU has
    // AVX2 (and through tests that check the same first).
    unsafe { avx2(coef, limit) }
}

/// # Safety
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2(coef: &[i16; 64], limit: &[i16; 64]) -> u64 {
    use std::arch::x86_64::*;
    let mut mask = 0u64;
    for half in 0..2 {
        let at = half * 32;
        // SAFETY: each load reads 16 lanes inside the 64-lane arrays; AVX2 is enabled here.
        let keep = |offset: usize| unsafe {
            let v = _mm256_loadu_si256(coef.as_ptr().add(at + offset).cast());
            let l = _mm256_loadu_si256(limit.as_ptr().add(at + offset).cast());
            _mm256_cmpgt_epi16(_mm256_abs_epi16(v), l)
        };
        let (a, b) = (keep(0), keep(16));
        // packs interleaves 128-bit lanes (a0-7, b0-7, a8-15, b8-15); put them back in order.
        let packed = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(a, b));
        mask |= u64::from(_mm256_movemask_epi8(packed) as u32) << at;
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kernels() -> Vec<(&'static str, Kernel)> {
        // Only x86_64 adds kernels to the list.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut all: Vec<(&'static str, Kernel)> = vec![("wide", portable)];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            all.push(("avx2", avx2_detected));
        } else {
            crate::luma::note_untested_without("AVX2", "survive mask");
        }
        all
    }

    proptest! {
        #[test]
        fn kernels_equal_the_scalar_reference(
            coef in proptest::array::uniform32(-2047i16..=2047).prop_flat_map(|a| {
                proptest::array::uniform32(-2047i16..=2047).prop_map(move |b| {
                    let mut all = [0i16; 64];
                    all[..32].copy_from_slice(&a);
                    all[32..].copy_from_slice(&b);
                    all
                })
            }),
            limit_seed in any::<u64>(),
        ) {
            let limit: [i16; 64] = std::array::from_fn(|k| ((limit_seed >> (k % 60)) % 300) as i16);
            let want = scalar(&coef, &limit);
            for (name, kernel) in kernels() {
                prop_assert_eq!(kernel(&coef, &limit), want, "{}", name);
            }
        }
    }

    #[test]
    fn every_position_and_boundary_matches() {
        // A coefficient survives when its magnitude is strictly over the limit: equal is dropped.
        for k in 0..64 {
            for (value, limit, survives) in [
                (5i16, 4i16, true),
                (4, 4, false),
                (-5, 4, true),
                (-4, 4, false),
                (0, 0, false),
                (1, 0, true),
                (-1, 0, true),
                (2047, 2046, true),
                (-2047, 2047, false),
            ] {
                let mut coef = [0i16; 64];
                let mut limits = [i16::MAX; 64];
                coef[k] = value;
                limits[k] = limit;
                let want = u64::from(survives) << k;
                assert_eq!(
                    scalar(&coef, &limits),
                    want,
                    "scalar k {k} v {value} limit {limit}"
                );
                for (name, kernel) in kernels() {
                    assert_eq!(
                        kernel(&coef, &limits),
                        want,
                        "{name} k {k} v {value} limit {limit}"
                    );
                }
            }
        }
    }
}
