//! Results judged as users see them: each one against its own source, so a result that went to
//! the wrong job, a blank one, or one turned the wrong way fails, not only one of the wrong size
//! or colour type. Both sides are decoded by decoders the engine does not use
//! (`cloudimg-reference`: jpeg-decoder and png), shown under their own orientations, and compared
//! by PSNR against the bound the engine's conformance test holds for the same kind of file.

use cloudimg_reference::{decode_output, psnr, reference_luma};

/// The PSNR a result of a [`crate::fixture_jpeg`] source must reach at the default quality (85).
/// Those fixtures are a gradient plus seeded noise: the noise is what quantization loses, so the
/// noisiest ones are the lowest. Measured by this module's tests (`cargo test -p
/// cloudimg-test-support -- --nocapture` prints it), 320x240 against its own source and against
/// another seed of the same size: noise 20 (q90) 40.4 and 31.4 dB, noise 40 (q90) 36.3 and 25.4
/// dB, noise 60 (q92) about 31.9 dB against its own (31.8 to 32.0 in the broker-fault tests). So
/// the bound tells a swapped result of the same size from the right one at noise 40 and up; at
/// noise 20 two fixtures are closer than that, and the tests that use them give them other sizes
/// (the judge's size check).
pub const FIXTURE_MIN_DB: f64 = 30.0;

/// Judges `result` (a JPEG or PNG from the shells) against `source` (the bytes that were sent,
/// displayed under EXIF `source_orientation`): it must decode whole, have one channel (two for a
/// gray+alpha PNG), display at the source's size, and reach `min_db` against the source's luma.
/// Returns the PSNR, or what is wrong.
pub fn judge(
    source: &[u8],
    source_orientation: u32,
    result: &[u8],
    min_db: f64,
) -> Result<f64, String> {
    let output = decode_output(result)?;
    if output.channels > 2 {
        return Err(format!(
            "the result has {} channels, not gray",
            output.channels
        ));
    }
    let shown = output.gray.displayed(output.orientation);
    let reference = reference_luma(source)
        .map_err(|e| format!("the source does not decode: {e}"))?
        .displayed(if (1..=8).contains(&source_orientation) {
            source_orientation as u8
        } else {
            1 // not an orientation: viewers show the image as stored
        });
    if (shown.width, shown.height) != (reference.width, reference.height) {
        return Err(format!(
            "the result displays at {}x{} (orientation {}), its source at {}x{}",
            shown.width, shown.height, output.orientation, reference.width, reference.height
        ));
    }
    let db = psnr(&shown, &reference);
    if db < min_db {
        return Err(format!(
            "the result is {db:.2} dB from its own source's luma, under the bound of {min_db} dB"
        ));
    }
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture_jpeg;

    fn convert(source: &[u8]) -> Vec<u8> {
        cloudimg_engine::convert(source, &cloudimg_engine::Options::default())
            .unwrap()
            .data
    }

    /// A one-channel JPEG of one gray level.
    fn blank(width: u16, height: u16, level: u8) -> Vec<u8> {
        let mut out = Vec::new();
        jpeg_encoder::Encoder::new(&mut out, 85)
            .encode(
                &vec![level; usize::from(width) * usize::from(height)],
                width,
                height,
                jpeg_encoder::ColorType::Luma,
            )
            .unwrap();
        out
    }

    #[test]
    fn a_result_passes_against_its_own_source_and_fails_against_another() {
        let mut lowest = f64::INFINITY;
        // The noise levels the shells' tests send fixtures of the same size at.
        for (noise, quality) in [(40, 90), (60, 92)] {
            let mine = fixture_jpeg(320, 240, 1, noise, quality);
            let other = fixture_jpeg(320, 240, 2, noise, quality);
            let result = convert(&mine);
            let db = judge(&mine, 1, &result, FIXTURE_MIN_DB)
                .unwrap_or_else(|e| panic!("noise {noise}: {e}"));
            let swapped = judge(&other, 1, &result, FIXTURE_MIN_DB);
            let apart = judge(&other, 1, &result, 0.0).unwrap();
            eprintln!(
                "noise {noise}: {db:.2} dB against its own source, {apart:.2} dB against another"
            );
            assert!(
                swapped.is_err_and(|e| e.contains("under the bound")),
                "a swapped result passed"
            );
            lowest = lowest.min(db);
        }
        eprintln!("lowest fixture result: {lowest:.2} dB (bound {FIXTURE_MIN_DB})");
    }

    #[test]
    fn blank_cut_turned_or_resized_results_fail() {
        let source = fixture_jpeg(320, 240, 3, 40, 90);
        for level in [0, 128, 255] {
            let e = judge(&source, 1, &blank(320, 240, level), FIXTURE_MIN_DB).unwrap_err();
            assert!(e.contains("under the bound"), "blank {level}: {e}");
        }
        let result = convert(&source);
        let cut = &result[..result.len() / 2];
        assert!(
            judge(&source, 1, cut, FIXTURE_MIN_DB).is_err(),
            "a cut result passed"
        );
        let e = judge(
            &source,
            1,
            &convert(&fixture_jpeg(240, 320, 3, 40, 90)),
            0.0,
        )
        .unwrap_err();
        assert!(e.contains("displays at 240x320"), "{e}");
        // The source said "turn me a quarter": a result left as stored displays the wrong way.
        let e = judge(&source, 6, &result, FIXTURE_MIN_DB).unwrap_err();
        assert!(e.contains("displays at 320x240"), "{e}");
        // A colour result is not a grayscale one, whatever it shows.
        let e = judge(&source, 1, &source, 0.0).unwrap_err();
        assert!(e.contains("3 channels"), "{e}");
    }

    #[test]
    fn a_gray_png_result_is_judged_by_its_pixels() {
        let source = fixture_jpeg(96, 64, 4, 40, 90);
        let options = cloudimg_engine::Options {
            format: cloudimg_engine::OutputFormat::Png,
            ..Default::default()
        };
        let png = cloudimg_engine::convert(&source, &options).unwrap().data;
        judge(&source, 1, &png, FIXTURE_MIN_DB).unwrap();
        let other = fixture_jpeg(96, 64, 5, 40, 90);
        assert!(judge(&other, 1, &png, FIXTURE_MIN_DB).is_err());
    }
}
