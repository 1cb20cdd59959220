//! How a test that cannot run here says so, and where the corpus is: one rule for the engine's
//! tests and the shells' (`scripts/test.sh` counts the skips these write).

use std::path::{Path, PathBuf};

/// A test that cannot run here says so, loudly. Under `CI=true` a missing prerequisite is a
/// failure (the panic), never a pass. Elsewhere the test passes, the line `SKIPPED: <test>:
/// <reason>` goes to stderr and the reason is logged ([`record_skip`]). Returns `None` so callers
/// can write `let Some(x) = ... else { return skip(...) }`.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{reason}: under CI=true this test must run, not skip");
    }
    record_skip(reason);
    None
}

/// Prints `SKIPPED: <test>: <reason>` and appends it to the file `CLOUDIMG_SKIP_LOG` names
/// (`scripts/test.sh` counts those lines at the end: cargo captures a passing test's stderr, so a
/// printed line alone would be lost), without the CI rule: for tests a run opts into, such as the
/// long soak.
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

/// The corpus root: `CLOUDIMG_CORPUS`, else `../shared/corpus` beside the workspace; a skip (see
/// [`skip`]) where it is absent.
pub fn corpus() -> Option<PathBuf> {
    let root = std::env::var_os("CLOUDIMG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    if root.join("MANIFEST.tsv").is_file() {
        return Some(root);
    }
    skip(&format!(
        "corpus absent: no {} (set CLOUDIMG_CORPUS)",
        root.join("MANIFEST.tsv").display()
    ))
}
