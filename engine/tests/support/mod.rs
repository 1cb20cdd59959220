//! Shared by the engine's integration tests: the corpus, an independent reference decoder, and
//! image comparisons.
#![allow(dead_code)] // each test binary uses a different part

pub mod counting;
pub mod fixtures;
pub mod libjpeg;
pub mod pillow;

// The reference decoders and comparisons live in their own crate: the shells' tests judge their
// results with the same ones.
#[allow(unused_imports)] // each test binary uses a different part
pub use cloudimg_reference::{Gray, Output, decode_output, luma, over_white, psnr, reference_luma};

use std::path::{Path, PathBuf};

/// A test that cannot run here says so, loudly. Under `CI=true` a missing prerequisite is a
/// failure (the panic), never a pass. Elsewhere the test passes, the line `SKIPPED: <reason>`
/// goes to stderr, and the reason is appended to the file `CLOUDIMG_SKIP_LOG` names (set by
/// `scripts/test.sh`, which counts the lines at the end: cargo captures a passing test's stderr,
/// so a printed line alone would be lost). Returns `None` so callers can write
/// `let Some(x) = ... else { return skip(...) }`.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}: under CI=true this test must run, not skip");
    }
    record_skip(reason);
    None
}

/// Prints and logs a skip without the CI rule: for tests a run opts into (the long ones).
pub fn record_skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(log) = std::env::var_os("CLOUDIMG_SKIP_LOG") {
        // One short write per line with O_APPEND: lines from parallel tests never interleave.
        let line = format!("{test}: {reason}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = appended {
            panic!(
                "cannot append to CLOUDIMG_SKIP_LOG {}: {e}",
                log.to_string_lossy()
            );
        }
    }
}

/// The corpus root: `CLOUDIMG_CORPUS`, else `../shared/corpus` from the workspace root; a skip
/// (see [`skip`]) where it is absent.
pub fn corpus() -> Option<PathBuf> {
    let root = std::env::var_os("CLOUDIMG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    if root.join("MANIFEST.tsv").is_file() {
        return Some(root);
    }
    skip(&format!(
        "corpus absent: no {} (set CLOUDIMG_CORPUS)",
        root.join("MANIFEST.tsv").display()
    ))
}

/// One row of MANIFEST.tsv.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub details: String,
    pub expect: String,
    /// The `format` column: `JPEG`, `PNG`, `WEBP`, `BMP`, ...
    pub format: String,
}

impl Entry {
    /// The directory that names the file's class, e.g. `conformance/jpeg/progressive`.
    pub fn class(&self) -> String {
        cloudimg_reference::corpus_class(&self.path)
    }

    /// The EXIF orientation the manifest records (1 when there is none).
    pub fn orientation(&self) -> u8 {
        self.detail("exif_orientation")
            .and_then(|v| v.parse().ok())
            .filter(|v| (1..=8).contains(v))
            .unwrap_or(1)
    }

    pub fn detail(&self, key: &str) -> Option<&str> {
        self.details
            .split(';')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }

    /// Width and height as the source displays.
    pub fn displayed(&self) -> (u32, u32) {
        if self.orientation() >= 5 {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

pub fn manifest(root: &Path) -> Vec<Entry> {
    manifest_named(root, "MANIFEST.tsv")
}

/// The rows of `name`, a manifest with MANIFEST.tsv's columns (MANIFEST-formats.tsv).
pub fn manifest_named(root: &Path, name: &str) -> Vec<Entry> {
    let text =
        std::fs::read_to_string(root.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split('\t').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    };
    let (path, width, height, details, expect, format) = (
        col("path"),
        col("width"),
        col("height"),
        col("details"),
        col("expect"),
        col("format"),
    );
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            Entry {
                path: f[path].to_string(),
                width: f[width].parse().unwrap_or(0),
                height: f[height].parse().unwrap_or(0),
                details: f[details].to_string(),
                expect: f[expect].to_string(),
                format: f[format].to_string(),
            }
        })
        .collect()
}
