//! The scan cap: a progressive JPEG repeating one scan a thousand times is refused at the scan
//! past `Limits::max_scans`, before it is decoded; ordinary progressive files are not affected.

mod support;

use cloudimg_engine::{
    Error, LimitKind, Limits, Options, OutputFormat, PathChoice, convert, estimate, probe,
};
use cloudimg_hostile::{count_scans, repeat_last_scan};
use support::fixtures::{self, JpegSpec};

fn progressive() -> Vec<u8> {
    fixtures::jpeg(JpegSpec {
        width: 640,
        height: 480,
        progressive: true,
        ..JpegSpec::default()
    })
}

/// A progressive CMYK JPEG: decoded by zune-jpeg, not the engine's own decoder.
fn progressive_cmyk() -> Vec<u8> {
    let rgb = fixtures::rgb_picture(320, 240);
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 0])
        .collect();
    let mut out = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, 90);
    encoder.set_progressive(true);
    encoder
        .encode(&cmyk, 320, 240, jpeg_encoder::ColorType::Cmyk)
        .expect("encodes");
    out
}

fn scans_refused<T: std::fmt::Debug>(result: Result<T, Error>) -> (u64, u64) {
    match result {
        Err(Error::OverLimit {
            limit: LimitKind::Scans,
            found,
            max,
        }) => (found, max),
        other => panic!("expected the scan limit, got {other:?}"),
    }
}

#[test]
fn a_thousand_repeated_scans_are_refused_at_the_first_past_the_cap() {
    let source = progressive();
    let bomb = repeat_last_scan(&source, 1000);
    assert!(count_scans(&bomb) > 1000);
    for path in [PathChoice::Auto, PathChoice::Pixels] {
        let options = Options {
            path,
            ..Options::default()
        };
        assert_eq!(
            scans_refused(convert(&bomb, &options)),
            (101, 100),
            "{path:?}"
        );
    }
    // The producer's probe and the worker's estimate refuse it from a walk over the markers.
    assert_eq!(scans_refused(probe(&bomb, &Limits::default())), (101, 100));
    assert_eq!(
        scans_refused(estimate(&bomb, &Options::default())),
        (101, 100)
    );
}

#[test]
fn the_cap_holds_on_the_path_through_zune_jpeg() {
    let source = progressive_cmyk();
    convert(&source, &Options::default()).expect("the CMYK source converts");
    let bomb = repeat_last_scan(&source, 1000);
    assert_eq!(
        scans_refused(convert(&bomb, &Options::default())),
        (101, 100)
    );
}

#[test]
fn progressive_files_within_the_cap_convert_and_the_cap_is_configurable() {
    let source = progressive();
    let scans = count_scans(&source);
    assert!(scans > 1, "the fixture is progressive with {scans} scans");
    for format in [OutputFormat::Jpeg, OutputFormat::Png] {
        let options = Options {
            format,
            ..Options::default()
        };
        convert(&source, &options).expect("a normal progressive file converts");
    }
    // Repeating the last scan 20 times stays under the default cap.
    let repeated = repeat_last_scan(&source, 20);
    assert_eq!(count_scans(&repeated), scans + 20);
    convert(&repeated, &Options::default()).expect("converts");
    // A cap of exactly the scans the file has passes; one fewer refuses.
    let capped = |max_scans: usize| Options {
        limits: Limits {
            max_scans: max_scans as u32,
            ..Limits::default()
        },
        ..Options::default()
    };
    convert(&source, &capped(scans)).expect("a cap equal to the scans passes");
    assert_eq!(
        scans_refused(convert(&source, &capped(scans - 1))),
        (scans as u64, scans as u64 - 1)
    );
}
