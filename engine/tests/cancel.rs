//! A conversion stops when its `Cancel` is set from another thread, and frees what it held.

mod support;

use std::sync::mpsc;
use std::time::Instant;

use cloudimg_engine::{
    Cancel, Error, ErrorKind, Options, OutputFormat, PathChoice, convert, convert_cancellable,
};
use support::counting::{Counting, live, peak_during};
use support::fixtures::{self, JpegSpec};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A 3000x2000 progressive JPEG: its luma plane alone is 12.75 MB.
fn big_progressive() -> Vec<u8> {
    fixtures::jpeg(JpegSpec {
        width: 3000,
        height: 2000,
        progressive: true,
        ..JpegSpec::default()
    })
}

const PLANE: u64 = 375 * 250 * 136;

#[test]
fn a_set_flag_stops_every_path_before_it_starts() {
    let jpeg = fixtures::jpeg(JpegSpec::default());
    let png = fixtures::png(
        2,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0, 255],
    );
    let cancel = Cancel::new();
    let clone = cancel.clone();
    assert!(!cancel.is_cancelled());
    clone.cancel();
    assert!(cancel.is_cancelled(), "clones share the flag");
    for data in [&jpeg, &png] {
        for (format, path) in [
            (OutputFormat::Jpeg, PathChoice::Auto),
            (OutputFormat::Jpeg, PathChoice::Pixels),
            (OutputFormat::Png, PathChoice::Auto),
        ] {
            let options = Options {
                format,
                path,
                ..Options::default()
            };
            let err = convert_cancellable(data, &options, &cancel).unwrap_err();
            assert!(matches!(err, Error::Cancelled), "{err:?}");
            assert_eq!(err.kind(), ErrorKind::Cancelled);
            assert_eq!(err.kind().as_str(), "cancelled");
        }
    }
}

/// What one conversion on the converting thread did.
struct Attempt {
    result: Result<(), Error>,
    /// Heap live after it returned, above what was live before it began.
    left: i64,
    /// The most heap it held above that.
    peak: u64,
    /// From the flag being set (sent over the channel) to the conversion returning.
    returned: Instant,
}

#[test]
fn a_flag_set_from_another_thread_stops_a_big_progressive_conversion_and_frees_it() {
    let data = big_progressive();
    let options = Options::default();
    // How long one conversion takes here, to set the flag about halfway through the next.
    let start = Instant::now();
    convert(&data, &options).expect("converts");
    let whole = start.elapsed();

    let (to_worker, jobs) = mpsc::channel::<Cancel>();
    let (started_tx, started) = mpsc::channel::<()>();
    let (done_tx, done) = mpsc::channel::<Attempt>();
    let worker = std::thread::spawn(move || {
        for cancel in jobs {
            started_tx.send(()).unwrap();
            let base = live();
            let (result, peak) =
                peak_during(|| convert_cancellable(&data, &options, &cancel).map(drop));
            let returned = Instant::now();
            done_tx
                .send(Attempt {
                    result,
                    left: live() - base,
                    peak,
                    returned,
                })
                .unwrap();
        }
    });

    // Retried until a flag lands mid-conversion: one set too late lets the conversion finish,
    // one set too early stops it before it allocated anything; both prove nothing.
    let mut stopped_midway = None;
    for attempt in 0..20 {
        let cancel = Cancel::new();
        to_worker.send(cancel.clone()).unwrap();
        started.recv().unwrap();
        std::thread::sleep(whole / 2);
        let set = Instant::now();
        cancel.cancel();
        let outcome = done.recv().unwrap();
        match outcome.result {
            Err(Error::Cancelled) => {
                assert_eq!(
                    outcome.left, 0,
                    "attempt {attempt} kept heap after cancelling"
                );
                if outcome.peak >= PLANE {
                    stopped_midway = Some((outcome.peak, outcome.returned - set));
                    break;
                }
            }
            Ok(()) => assert_eq!(outcome.left, 0),
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    drop(to_worker);
    worker.join().unwrap();
    let (peak, latency) = stopped_midway.expect("a flag landed mid-conversion in 20 attempts");
    println!(
        "a whole conversion takes {whole:?}; cancelled after reaching {peak} bytes, returned \
         {latency:?} after the flag was set, every byte freed"
    );
}

#[test]
fn an_unset_flag_changes_nothing() {
    let jpeg = fixtures::jpeg(JpegSpec {
        progressive: true,
        orientation: 6,
        ..JpegSpec::default()
    });
    for format in [OutputFormat::Jpeg, OutputFormat::Png] {
        let options = Options {
            format,
            ..Options::default()
        };
        let plain = convert(&jpeg, &options).expect("converts");
        let with_flag = convert_cancellable(&jpeg, &options, &Cancel::new()).expect("converts");
        assert_eq!(plain.data, with_flag.data);
    }
}
