//! RGB(A) to BT.601 luma: one dispatch point over the scalar reference, the `wide` kernel and,
//! on x86_64, an AVX2 kernel chosen at run time.

#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;
mod scalar;

pub(crate) use scalar::luma;
pub(crate) use scalar::over_white;
pub(crate) use scalar::rgb as scalar_rgb;

/// Says that a test left a kernel untested because this CPU lacks `feature` (AVX2, BMI2), through
/// the tests' one skip log (`cloudimg_reference::record_skip`: `SKIPPED: ...` on stderr and a line
/// in `CLOUDIMG_SKIP_LOG`, which `scripts/test.sh` counts). Not a failure under CI: an x86_64 host
/// without the feature is one the engine supports, where that kernel never runs.
#[cfg(all(test, target_arch = "x86_64"))]
pub(crate) fn note_untested_without(feature: &str, kernel: &str) {
    cloudimg_reference::record_skip(&format!(
        "{kernel}: this CPU has no {feature}, the {feature} kernel was not tested"
    ));
}

/// The instruction set the engine's kernels run on in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimdPath {
    /// x86_64 with AVX2, detected at run time.
    Avx2,
    /// The `wide` kernels as compiled for this target (NEON on aarch64, SSE2 on x86_64).
    Wide,
}

impl SimdPath {
    /// What this CPU runs: detected once, then a cached load.
    pub fn detect() -> SimdPath {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            return SimdPath::Avx2;
        }
        SimdPath::Wide
    }

    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Avx2 => "avx2",
            SimdPath::Wide if cfg!(all(target_arch = "aarch64", target_feature = "neon")) => {
                "neon (wide)"
            }
            SimdPath::Wide if cfg!(target_feature = "avx2") => "avx2 (wide, compile time)",
            SimdPath::Wide if cfg!(target_feature = "sse2") => "sse2 (wide)",
            SimdPath::Wide => "scalar (wide)",
        }
    }
}

impl std::fmt::Display for SimdPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub(crate) fn $name(src: &[u8], out: &mut [u8]) {
            match SimdPath::detect() {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `detect` returned Avx2 only after the CPU reported AVX2.
                SimdPath::Avx2 => unsafe { avx2::$name(src, out) },
                _ => portable::$name(src, out),
            }
        }
    };
}

dispatch!(
    /// Packed RGB to luma; `out.len()` pixels.
    rgb
);
dispatch!(
    /// Packed RGBA to luma, alpha ignored (it is kept separately).
    rgba
);
dispatch!(
    /// Packed RGBA to luma composited over white.
    rgba_over_white
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Kernel = fn(&[u8], &mut [u8]);

    /// Every kernel this host can run, by name, next to its scalar reference.
    fn kernels() -> Vec<(&'static str, usize, Kernel, Kernel)> {
        // Only x86_64 adds kernels to the list.
        #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
        let mut all: Vec<(&'static str, usize, Kernel, Kernel)> = vec![
            ("wide rgb", 3, portable::rgb, scalar::rgb),
            ("wide rgba", 4, portable::rgba, scalar::rgba),
            (
                "wide rgba over white",
                4,
                portable::rgba_over_white,
                scalar::rgba_over_white,
            ),
        ];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY (of the calls these wrap): AVX2 was just detected.
            all.push((
                "avx2 rgb",
                3,
                |s, o| unsafe { avx2::rgb(s, o) },
                scalar::rgb,
            ));
            all.push((
                "avx2 rgba",
                4,
                |s, o| unsafe { avx2::rgba(s, o) },
                scalar::rgba,
            ));
            all.push((
                "avx2 rgba over white",
                4,
                |s, o| unsafe { avx2::rgba_over_white(s, o) },
                scalar::rgba_over_white,
            ));
        } else {
            note_untested_without("AVX2", "luma (rgb, rgba, rgba over white)");
        }
        all
    }

    proptest! {
        /// Every length from 0 to 4 x 8 lanes + 1 pixels (twice the widest step), at every offset
        /// into the buffer, so each tail case and unaligned start runs.
        #[test]
        fn simd_kernels_equal_the_scalar_reference(
            bytes in proptest::collection::vec(any::<u8>(), 4 * 67 + 3),
            len in 0usize..=65,
            offset in 0usize..4,
        ) {
            for (name, stride, kernel, reference) in kernels() {
                let src = &bytes[offset..offset + len * stride];
                let (mut got, mut want) = (vec![0u8; len], vec![0u8; len]);
                kernel(src, &mut got);
                reference(src, &mut want);
                prop_assert_eq!(&got, &want, "{} at length {} offset {}", name, len, offset);
            }
        }
    }

    #[test]
    fn every_length_and_offset_matches_exhaustively() {
        let bytes: Vec<u8> = (0..400u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for (name, stride, kernel, reference) in kernels() {
            for len in 0..=65 {
                for offset in 0..4 {
                    let src = &bytes[offset..offset + len * stride];
                    let (mut got, mut want) = (vec![0u8; len], vec![0u8; len]);
                    kernel(src, &mut got);
                    reference(src, &mut want);
                    assert_eq!(got, want, "{name} at length {len} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn over_white_matches_for_every_luma_and_alpha() {
        // All 65,536 (gray, alpha) pairs through each kernel, as gray RGBA pixels.
        let src: Vec<u8> = (0..=255u8)
            .flat_map(|a| (0..=255u8).flat_map(move |y| [y, y, y, a]))
            .collect();
        let mut want = vec![0u8; 65536];
        scalar::rgba_over_white(&src, &mut want);
        for (i, w) in want.iter().enumerate() {
            let (y, a) = ((i % 256) as u8, (i / 256) as u8);
            assert_eq!(*w, over_white(luma(y, y, y), a));
        }
        for (name, stride, kernel, _) in kernels() {
            if stride == 4 && name.contains("over white") {
                let mut got = vec![0u8; 65536];
                kernel(&src, &mut got);
                assert_eq!(got, want, "{name}");
            }
        }
    }

    #[test]
    fn luma_uses_pillows_weights() {
        assert_eq!(luma(255, 0, 0), 76);
        assert_eq!(luma(0, 255, 0), 150);
        assert_eq!(luma(0, 0, 255), 29);
        assert_eq!(luma(255, 255, 255), 255);
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(0, 255), 0);
        assert_eq!(over_white(100, 128), 177);
    }
}
