//! The pixel path's JPEG decode and encode against libjpeg-turbo, stage by stage: its decode of a
//! gray or YCbCr JPEG must equal `djpeg -grayscale -dct int` sample for sample, and its encode of a
//! luma plane must equal `cjpeg -grayscale -dct int` at the same quality (see
//! `encode_equals_cjpeg_grayscale_islow` for exactly what is equal).

mod support;

use cloudimg_engine::batch::Pool;
use cloudimg_engine::stages::{decode_luma_plane, encode_luma_plane};
use cloudimg_engine::{Options, Quality, convert};
use support::fixtures::{self, JpegSpec};
use support::{Gray, libjpeg, manifest};

/// The engine's decode of every Huffman-coded 8-bit gray or YCbCr JPEG of the corpus whose luma
/// is full resolution (baseline and progressive, every subsampling, restart intervals, odd sizes)
/// equals libjpeg's accurate integer IDCT output exactly.
#[test]
fn decode_equals_djpeg_grayscale_islow() {
    let Some(root) = support::corpus() else {
        return;
    };
    let Some(()) = libjpeg::tools(&["djpeg"]) else {
        return;
    };
    let files: Vec<_> = libjpeg::huffman_jpegs(&manifest(&root))
        .into_iter()
        .filter(|e| !libjpeg::takes_pixels(e))
        .collect();
    let pool = Pool::new(0).expect("pool");
    let results = pool.map(&files, |entry| -> Result<(), String> {
        let data = std::fs::read(root.join(&entry.path)).map_err(|e| e.to_string())?;
        let (pixels, width, height) =
            decode_luma_plane(&data).map_err(|e| format!("engine: {e}"))?;
        let theirs = libjpeg::djpeg_gray(&data)?;
        if (width, height) != (theirs.width, theirs.height) {
            return Err(format!(
                "{width}x{height}, djpeg {}x{}",
                theirs.width, theirs.height
            ));
        }
        match pixels.iter().zip(&theirs.pixels).position(|(a, b)| a != b) {
            None => Ok(()),
            Some(i) => Err(format!(
                "sample ({}, {}) is {}, djpeg's {}; {} samples differ",
                i % width,
                i / width,
                pixels[i],
                theirs.pixels[i],
                pixels
                    .iter()
                    .zip(&theirs.pixels)
                    .filter(|(a, b)| a != b)
                    .count()
            )),
        }
    });
    let failures: Vec<String> = files
        .iter()
        .zip(results)
        .filter_map(|(entry, r)| r.err().map(|e| format!("{}: {e}", entry.path)))
        .collect();
    println!(
        "{} of {} JPEGs decode to djpeg's samples",
        files.len() - failures.len(),
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} differ from djpeg -grayscale -dct int:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(files.len() > 100, "only {} files compared", files.len());
}

/// A baseline JPEG's segments in order, except that the Huffman table definitions of all its DHT
/// segments are joined into one: a DHT segment may define one table or several (cjpeg writes one
/// segment per table, the engine one for both), which changes nothing the decoder sees.
#[derive(Debug, PartialEq)]
struct Content {
    /// (marker, body) of each segment before the scan header, DHT excluded.
    segments: Vec<(u8, Vec<u8>)>,
    /// Every table definition of every DHT segment, in order.
    huffman: Vec<u8>,
    /// The scan header's body and the entropy-coded data up to EOI.
    scan: Vec<u8>,
}

fn content(jpeg: &[u8]) -> Result<Content, String> {
    let mut found = Content {
        segments: Vec::new(),
        huffman: Vec::new(),
        scan: Vec::new(),
    };
    let mut at = 2;
    loop {
        let (marker, length) = match jpeg.get(at..at + 4) {
            Some(&[0xFF, m, hi, lo]) => (m, usize::from(u16::from_be_bytes([hi, lo]))),
            _ => return Err(format!("no marker at {at}")),
        };
        let body = jpeg.get(at + 4..at + 2 + length).ok_or("segment cut")?;
        match marker {
            0xC4 => found.huffman.extend_from_slice(body),
            0xDA => {
                let scan = &jpeg[at + 4..];
                let end = scan
                    .windows(2)
                    .rposition(|w| w == [0xFF, 0xD9])
                    .ok_or("no EOI")?;
                found.scan = scan[..end].to_vec();
                return Ok(found);
            }
            _ => found.segments.push((marker, body.to_vec())),
        }
        at += 2 + length;
    }
}

/// Luma planes to encode: libjpeg's decodes of two corpus photos (one baseline, one progressive)
/// and generated pictures whose sizes are no multiple of 8 (edge blocks padded by repetition).
fn planes() -> Option<Vec<(String, Gray)>> {
    let root = support::corpus()?;
    let mut planes = Vec::new();
    for path in [
        "bench/nikon-d3100_14mp.jpg",
        "bench-progressive/canon-eos-30d_8mp_440_progressive.jpg",
    ] {
        let data = std::fs::read(root.join(path)).expect("read");
        planes.push((path.to_string(), libjpeg::djpeg_gray(&data).expect("djpeg")));
    }
    for (width, height) in [(333u16, 251u16), (8, 8), (1, 1), (17, 3)] {
        let source = fixtures::jpeg(JpegSpec {
            width,
            height,
            ..JpegSpec::default()
        });
        planes.push((
            format!("generated {width}x{height}"),
            libjpeg::djpeg_gray(&source).expect("djpeg"),
        ));
    }
    Some(planes)
}

/// The engine's encode of a luma plane is cjpeg's: the same JFIF segment, quantization table,
/// frame, Huffman tables and scan, byte for byte (the forward DCT is libjpeg's `islow`, the
/// quantizer its reciprocal multiply, the padding of edge blocks its repetition). The one
/// difference: cjpeg writes each Huffman table in its own DHT segment, the engine both in one,
/// so the engine's file is exactly 4 bytes shorter. From quality 1 (steps clamped to 255, as
/// cjpeg's `-baseline` does) to 100.
#[test]
fn encode_equals_cjpeg_grayscale_islow() {
    let Some(()) = libjpeg::tools(&["djpeg", "cjpeg"]) else {
        return;
    };
    let Some(planes) = planes() else { return };
    let mut failures = Vec::new();
    let mut compared = 0;
    for (name, plane) in &planes {
        for quality in [1u8, 10, 50, 75, 85, 92, 100] {
            let ours = encode_luma_plane(&plane.pixels, plane.width, plane.height, quality)
                .expect("encodes");
            let theirs = libjpeg::cjpeg_gray(plane, quality, false).expect("cjpeg");
            let (a, b) = (content(&ours), content(&theirs));
            compared += 1;
            if a != b || ours.len() + 4 != theirs.len() {
                let part = match (&a, &b) {
                    (Ok(a), Ok(b)) if a.segments != b.segments => "segments before the scan",
                    (Ok(a), Ok(b)) if a.huffman != b.huffman => "Huffman tables",
                    (Ok(a), Ok(b)) if a.scan != b.scan => "scan",
                    (Ok(_), Ok(_)) => "length",
                    _ => "structure",
                };
                failures.push(format!(
                    "{name} q{quality}: {part} differ ({} bytes, cjpeg {})",
                    ours.len(),
                    theirs.len()
                ));
            }
        }
    }
    println!("{compared} encodes equal cjpeg's");
    assert!(
        failures.is_empty(),
        "{} encodes differ from cjpeg -grayscale -dct int -baseline:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The README's size figures against libjpeg, measured: over `bench/` at quality 85, the
/// engine's outputs (coefficient path) against `cjpeg -grayscale -dct int -baseline` of libjpeg's
/// decoded luma plane (what Pillow and libjpeg-turbo's own tools write: the peers harness found
/// their outputs byte-identical), and what cjpeg's `-optimize` (per-image Huffman tables, which
/// the engine does not use because they need the whole image before the first byte) saves.
/// Prints the totals (`--nocapture`); fails if the engine's outputs stop being smaller.
#[test]
fn outputs_are_smaller_than_libjpegs_at_the_same_quality() {
    let Some(root) = support::corpus() else {
        return;
    };
    let Some(()) = libjpeg::tools(&["djpeg", "cjpeg"]) else {
        return;
    };
    let photos: Vec<_> = manifest(&root)
        .into_iter()
        .filter(|e| e.path.starts_with("bench/"))
        .collect();
    assert_eq!(photos.len(), 30, "expected the 30 bench photos");
    let options = Options {
        quality: Quality::Level(85),
        ..Options::default()
    };
    let pool = Pool::new(0).expect("pool");
    let sizes = pool.map(&photos, |entry| {
        let data = std::fs::read(root.join(&entry.path)).expect("read");
        let ours = convert(&data, &options).expect("converts").data.len();
        let plane = libjpeg::djpeg_gray(&data).expect("djpeg");
        let plain = libjpeg::cjpeg_gray(&plane, 85, false).expect("cjpeg").len();
        let optimized = libjpeg::cjpeg_gray(&plane, 85, true).expect("cjpeg").len();
        (ours, plain, optimized)
    });
    let (mut ours, mut plain, mut optimized) = (0, 0, 0);
    let mut larger = Vec::new();
    for (entry, (o, p, z)) in photos.iter().zip(sizes) {
        (ours, plain, optimized) = (ours + o, plain + p, optimized + z);
        if o >= p {
            larger.push(format!("{}: {o} bytes, cjpeg {p}", entry.path));
        }
    }
    let percent = |a: usize, b: usize| 100.0 * (1.0 - a as f64 / b as f64);
    println!(
        "bench/ at q85: engine {ours} bytes, cjpeg {plain} ({:.1} % smaller), cjpeg -optimize \
         {optimized} ({:.1} % below plain cjpeg)",
        percent(ours, plain),
        percent(optimized, plain)
    );
    assert!(
        larger.is_empty(),
        "outputs no smaller than cjpeg's:\n{}",
        larger.join("\n")
    );
}
