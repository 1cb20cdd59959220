//! `estimate` against what conversions really take: a counting allocator measures the peak heap
//! of converting every corpus file (MANIFEST.tsv's and MANIFEST-formats.tsv's), by every path,
//! and each must fall within `measured <= estimate <= 2 x measured + 1 MiB` (for resident memory,
//! below, `measured <= estimate + 128 KiB`).
//!
//! The counting allocator sees the Rust heap only. libwebp, a C library, allocates with `malloc`:
//! the estimate includes its buffers (the worker's memory all the same, taken from libwebp's
//! sources), so for WebP the measured side is a lower bound of the real peak and the upper
//! bound is the one that holds the estimate honest.
//!
//! AVIF and HEIC hold more in C: dav1d's pictures come from the Rust heap, but libde265 decodes
//! a picture with sample-adaptive offset (most HEVC) into its own buffers, and both keep block
//! state there. Their files are measured by what the whole process holds: a child process (this
//! test binary again) converts one file and reports how much its peak resident memory grew,
//! which sees both heaps.

mod support;

use std::process::Command;

use cloudimg_engine::{Options, OutputFormat, PathChoice, convert, estimate};
use support::counting::{Counting, peak_during};
use support::fixtures::{self, JpegSpec};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MIB: u64 = 1 << 20;

/// The three ways every input is converted: the default path, the pixel path forced, PNG output.
fn ways() -> [(&'static str, Options); 3] {
    [
        ("default", Options::default()),
        (
            "pixels",
            Options {
                path: PathChoice::Pixels,
                ..Options::default()
            },
        ),
        (
            "png",
            Options {
                format: OutputFormat::Png,
                ..Options::default()
            },
        ),
    ]
}

struct Row {
    file: String,
    how: &'static str,
    measured: u64,
    estimate: u64,
    /// How far a measurement may exceed the estimate: none for the counted heap; for resident
    /// memory [`RESIDENT_SLACK`].
    slack: u64,
}

/// Resident memory is counted in pages and includes what the process touches besides the
/// conversion's heap (thread stacks, the allocator's own bookkeeping): up to 55 KiB above the
/// estimate was seen on a 12 MP HEIC whose peak is the engine's rotation, not the codec.
const RESIDENT_SLACK: u64 = 128 << 10;

impl Row {
    fn ratio(&self) -> f64 {
        self.estimate as f64 / self.measured.max(1) as f64
    }

    fn within(&self) -> bool {
        self.measured <= self.estimate + self.slack && self.estimate <= 2 * self.measured + MIB
    }
}

/// The formats whose decoders keep much of their memory in C (above).
fn measured_by_resident_memory(format: &str) -> bool {
    matches!(format, "AVIF" | "HEIF" | "HEIC")
}

/// Converts `data` counting its peak heap, and estimates it; `None` where it does not convert.
fn measure(file: &str, how: &'static str, data: &[u8], options: &Options) -> Option<Row> {
    let (converted, measured) = peak_during(|| convert(data, options));
    let converted = converted.ok()?;
    let estimate = estimate(data, options)
        .unwrap_or_else(|e| panic!("{file}: converts, yet no estimate: {e}"));
    assert_eq!(estimate.path, converted.path, "{file} ({how})");
    Some(Row {
        file: file.to_string(),
        how,
        measured,
        estimate: estimate.peak_bytes,
        slack: 0,
    })
}

#[test]
fn generated_images_of_every_path_peak_within_their_estimates() {
    let (w, h) = (1000u32, 760u32);
    let rgb = fixtures::rgb_picture(w as usize, h as usize);
    let rgba16: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 7, p[1], 9, p[2], 200])
        .collect();
    let gray_alpha: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[2]]).collect();
    let cmyk: Vec<u8> = rgb
        .chunks_exact(3)
        .flat_map(|p| [255 - p[0], 255 - p[1], 255 - p[2], 30])
        .collect();
    let mut cmyk_progressive = Vec::new();
    let mut encoder = jpeg_encoder::Encoder::new(&mut cmyk_progressive, 90);
    encoder.set_progressive(true);
    encoder
        .encode(&cmyk, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .expect("encodes");
    let jpeg = |progressive, orientation| {
        fixtures::jpeg(JpegSpec {
            width: w as u16,
            height: h as u16,
            progressive,
            orientation,
            ..JpegSpec::default()
        })
    };
    let inputs = [
        (
            "16-bit RGBA PNG",
            fixtures::png(w, h, png::ColorType::Rgba, png::BitDepth::Sixteen, &rgba16),
        ),
        (
            "gray+alpha PNG",
            fixtures::png(
                w,
                h,
                png::ColorType::GrayscaleAlpha,
                png::BitDepth::Eight,
                &gray_alpha,
            ),
        ),
        (
            "RGB PNG",
            fixtures::png(w, h, png::ColorType::Rgb, png::BitDepth::Eight, &rgb),
        ),
        ("progressive CMYK JPEG", cmyk_progressive),
        ("baseline JPEG", jpeg(false, 1)),
        ("progressive JPEG", jpeg(true, 1)),
        ("progressive JPEG, orientation 6", jpeg(true, 6)),
        ("baseline JPEG, orientation 3", jpeg(false, 3)),
    ];
    let ways = ways();
    let mut outside = 0;
    for (name, data) in &inputs {
        for (how, options) in &ways {
            let row = measure(name, how, data, options).expect("converts");
            println!(
                "{:>5.2}  measured {:>9}  estimate {:>9}  {name} ({how})",
                row.ratio(),
                row.measured,
                row.estimate
            );
            outside += usize::from(!row.within());
        }
    }
    assert_eq!(outside, 0, "conversions outside the bounds");
}

#[test]
fn every_corpus_conversion_peaks_within_its_estimate() {
    let Some(root) = support::corpus() else {
        return;
    };
    let ways = ways();
    let mut rows = Vec::new();
    let mut entries = support::manifest(&root);
    entries.extend(support::manifest_named(&root, "MANIFEST-formats.tsv"));
    for entry in entries {
        let path = root.join(&entry.path);
        let data = std::fs::read(&path).expect("read a corpus file");
        for (i, (how, options)) in ways.iter().enumerate() {
            if measured_by_resident_memory(&entry.format) {
                rows.extend(measure_in_child(&entry.path, &path, i, how, &data, options));
            } else {
                rows.extend(measure(&entry.path, how, &data, options));
            }
        }
    }
    assert!(rows.len() > 100, "only {} conversions", rows.len());
    rows.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let show = |row: &Row| {
        println!(
            "{:>6.2}  measured {:>11}  estimate {:>11}  {} ({})",
            row.ratio(),
            row.measured,
            row.estimate,
            row.file,
            row.how
        );
    };
    println!("lowest estimate / measured:");
    rows.iter().take(12).for_each(show);
    println!("highest estimate / measured (files over 1 MiB):");
    rows.iter()
        .filter(|r| r.measured > MIB)
        .rev()
        .take(12)
        .for_each(show);
    let outside: Vec<&Row> = rows.iter().filter(|r| !r.within()).collect();
    println!(
        "{} conversions, {} outside the bounds:",
        rows.len(),
        outside.len()
    );
    outside.iter().for_each(|r| show(r));
    assert!(outside.is_empty(), "{} conversions outside", outside.len());
}

/// The child's instructions: the file and the index of the way to convert it.
const CHILD_ENV: &str = "CLOUDIMG_MEMORY_CHILD";

/// Converts `path` in a child process and reads how much its peak resident memory grew (see the
/// module's notes); `None` where it does not convert.
fn measure_in_child(
    file: &str,
    path: &std::path::Path,
    way: usize,
    how: &'static str,
    data: &[u8],
    options: &Options,
) -> Option<Row> {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "child_converts_one_file", "--nocapture"])
        .env(CHILD_ENV, format!("{way}\t{}", path.display()))
        // glibc returns every large block to the kernel when it is freed (a fixed mmap threshold
        // and trimming), so the resident peak follows what is live rather than what was.
        .env("MALLOC_MMAP_THRESHOLD_", "131072")
        .env("MALLOC_TRIM_THRESHOLD_", "131072")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{file} ({how}): the child failed: {stdout}"
    );
    let grew: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("resident growth: "))
        .unwrap_or_else(|| panic!("{file} ({how}): the child printed no growth: {stdout}"))
        .trim()
        .parse()
        .ok()?;
    let estimate = estimate(data, options)
        .unwrap_or_else(|e| panic!("{file}: converts, yet no estimate: {e}"));
    Some(Row {
        file: file.to_string(),
        how,
        measured: grew,
        estimate: estimate.peak_bytes,
        slack: RESIDENT_SLACK,
    })
}

/// Reads a `/proc/self/status` field, in bytes.
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    kib << 10
}

/// Not a test of its own: the child process of [`measure_in_child`], which does nothing unless
/// `CLOUDIMG_MEMORY_CHILD` names a file. It warms the engine up on a small image (thread pools,
/// tables), resets the kernel's peak resident mark (`clear_refs` 5), converts the file, and
/// prints how far the peak rose above the resident memory before; "none" where the file does
/// not convert.
#[test]
fn child_converts_one_file() {
    let Ok(job) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (way, path) = job.split_once('\t').expect("way and path");
    let options = &ways()[way.parse::<usize>().expect("a way")].1;
    let data = std::fs::read(path).expect("read the file");
    let warm_up = fixtures::jpeg(JpegSpec::default());
    convert(&warm_up, options).expect("the warm-up converts");
    std::fs::write("/proc/self/clear_refs", "5").expect("reset the peak resident mark");
    let before = status_bytes("VmRSS:");
    let converted = convert(&data, options);
    let peak = status_bytes("VmHWM:");
    match converted {
        Ok(_) => println!("resident growth: {}", peak.saturating_sub(before)),
        Err(_) => println!("resident growth: none"),
    }
}

#[test]
fn a_declared_ten_thousand_square_progressive_jpeg_is_estimated_without_its_plane() {
    let mut jpeg = fixtures::jpeg(JpegSpec {
        progressive: true,
        ..JpegSpec::default()
    });
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC2])
        .expect("SOF2");
    jpeg[sof + 5..sof + 7].copy_from_slice(&10_000u16.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&10_000u16.to_be_bytes());
    let (estimate, peak) = peak_during(|| estimate(&jpeg, &Options::default()));
    let estimate = estimate.expect("estimates");
    // 1,250 x 1,250 blocks of 136 bytes: the plane alone is 212 MB.
    let plane = 1250 * 1250 * 136;
    assert!(estimate.peak_bytes > plane, "{}", estimate.peak_bytes);
    assert!(peak < 64 << 10, "estimating allocated {peak} bytes");
}
