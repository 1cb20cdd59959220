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
pub use cloudimg_reference::{
    Gray, Output, corpus, decode_output, luma, over_white, psnr, record_skip, reference_luma, skip,
};

use std::path::Path;

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
