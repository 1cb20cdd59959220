//! Bad input gets a clear error, never a panic and never a half-grey image.

mod support;

use cloudimg_engine::{ErrorKind, Options, OutputFormat, PathChoice, convert};
use jpeg_encoder::SamplingFactor;
use support::fixtures::{self, JpegSpec};

fn kinds() -> Vec<(&'static str, Vec<u8>)> {
    let spec = JpegSpec::default();
    vec![
        ("baseline 4:2:0", fixtures::jpeg(spec)),
        (
            "baseline 4:4:4",
            fixtures::jpeg(JpegSpec {
                sampling: SamplingFactor::R_4_4_4,
                ..spec
            }),
        ),
        (
            "progressive",
            fixtures::jpeg(JpegSpec {
                progressive: true,
                ..spec
            }),
        ),
        (
            "png",
            fixtures::png(
                320,
                240,
                png::ColorType::Rgb,
                png::BitDepth::Eight,
                &fixtures::rgb_picture(320, 240),
            ),
        ),
    ]
}

#[test]
fn every_truncation_of_a_valid_image_is_an_error() {
    for (name, data) in kinds() {
        assert!(
            convert(&data, &Options::default()).is_ok(),
            "{name} converts whole"
        );
        // Every cut from the first byte to the last one missing.
        for keep in (0..data.len())
            .step_by(7)
            .chain([data.len() - 1, data.len() - 2])
        {
            match convert(&data[..keep], &Options::default()) {
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::Invalid | ErrorKind::Unsupported),
                    "{name} cut at {keep}: {e}"
                ),
                Ok(c) => panic!(
                    "{name} cut at {keep} of {} gave a {}x{} image",
                    data.len(),
                    c.width,
                    c.height
                ),
            }
        }
    }
}

/// What a conversion of a damaged file may end in: an error that blames the input (never
/// `internal`, which means a bug), or a one-channel image that decodes whole.
fn damaged_outcome(
    result: std::thread::Result<Result<cloudimg_engine::Converted, cloudimg_engine::Error>>,
) -> Result<(), String> {
    match result {
        Err(_) => Err("panicked".into()),
        Ok(Err(e))
            if matches!(
                e.kind(),
                ErrorKind::Invalid | ErrorKind::Unsupported | ErrorKind::OverLimit
            ) =>
        {
            Ok(())
        }
        Ok(Err(e)) => Err(format!("failed as {}: {e}", e.kind().as_str())),
        Ok(Ok(c)) => match support::decode_output(&c.data) {
            Ok(output)
                if output.channels == 1
                    && (output.gray.width, output.gray.height)
                        == (c.width as usize, c.height as usize) =>
            {
                Ok(())
            }
            Ok(output) => Err(format!(
                "gave {} channels of {}x{}, reported {}x{}",
                output.channels, output.gray.width, output.gray.height, c.width, c.height
            )),
            Err(e) => Err(format!("gave an output that does not decode: {e}")),
        },
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    for (name, data) in kinds() {
        // Flip one byte at a time across the whole file (a prime stride covers every region).
        for at in (0..data.len()).step_by(13) {
            for value in [0x00, 0xFF, data[at] ^ 0x5A] {
                let mut bad = data.clone();
                bad[at] = value;
                let result = std::panic::catch_unwind(|| convert(&bad, &Options::default()));
                if let Err(e) = damaged_outcome(result) {
                    panic!("{name} with byte {at} set to {value:#04x}: {e}");
                }
            }
        }
    }
}

#[test]
fn errors_name_what_was_expected_and_found() {
    let jpeg = fixtures::jpeg(JpegSpec::default());
    let cut = convert(&jpeg[..jpeg.len() / 2], &Options::default())
        .unwrap_err()
        .to_string();
    assert!(cut.starts_with("invalid JPEG: truncated"), "{cut}");
    let pdf = convert(b"%PDF-1.7\n", &Options::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        pdf,
        "unsupported input: expected a JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP, ICO or TIFF signature, found a PDF document"
    );
    let empty = convert(b"", &Options::default()).unwrap_err().to_string();
    assert!(empty.contains("found an empty file"), "{empty}");
}

/// Replaces a JPEG's quantization tables with 16-bit tables of the largest step, 65535.
fn with_huge_steps(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut pos = 2;
    let mut replaced = false;
    while pos + 4 <= jpeg.len() && jpeg[pos] == 0xFF && jpeg[pos + 1] != 0xDA {
        let len = usize::from(u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]));
        if jpeg[pos + 1] == 0xDB {
            if !replaced {
                let mut payload = Vec::new();
                for id in 0..2u8 {
                    payload.push(0x10 | id);
                    payload.extend([0xFF; 128]);
                }
                out.extend_from_slice(&[0xFF, 0xDB]);
                out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
                out.extend_from_slice(&payload);
                replaced = true;
            }
        } else {
            out.extend_from_slice(&jpeg[pos..pos + 2 + len]);
        }
        pos += 2 + len;
    }
    out.extend_from_slice(&jpeg[pos..]);
    out
}

/// Found by the fuzzer: 16-bit quantization steps times large coefficients overflowed the
/// inverse DCT's 32-bit products. Such a file must give (garbage) pixels or an error, never a
/// panic, on every path.
#[test]
fn huge_quantization_steps_never_overflow() {
    let hostile = with_huge_steps(&fixtures::jpeg(JpegSpec::default()));
    for path in [PathChoice::Auto, PathChoice::Pixels] {
        for format in [OutputFormat::Jpeg, OutputFormat::Png] {
            let options = Options {
                path,
                format,
                ..Options::default()
            };
            let result = std::panic::catch_unwind(|| convert(&hostile, &options));
            if let Err(e) = damaged_outcome(result) {
                panic!("{path:?} {format:?}: {e}");
            }
        }
    }
}
