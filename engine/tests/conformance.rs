//! The corpus conformance sweep: every file in MANIFEST.tsv does what its `expect` column says,
//! and every output is checked against a reference luma from an independent decoder.

mod support;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use cloudimg_engine::batch::Pool;
use cloudimg_engine::{Options, convert};
use support::{Entry, decode_output, manifest, psnr, reference_luma};

/// The reference run's pillow-seed mean over `bench/` (47.2 dB); the engine's mean may not fall
/// more than 0.3 dB below it. (It may be higher: the coefficient path skips a pixel round trip.)
const SEED_MEAN_DB: f64 = 47.2;

/// The `either` rows' outcomes, pinned: one `converted` or `refused` line per file, by path.
/// Which of them the engine takes is a decision, so a change shows as a diff of this file.
const EITHER_PINNED: &str = "tests/conformance_either.txt";

/// The pinned list's text for these outcomes.
fn either_listing(outcomes: &[(&str, bool)]) -> String {
    let converted = outcomes.iter().filter(|(_, c)| *c).count();
    let mut text = format!(
        "# The corpus files marked `either` and what the engine does with them ({converted} converted, \
         {} refused). Written by CLOUDIMG_UPDATE_EITHER=1 cargo test -p cloudimg-engine --test \
         conformance; checked by the same test without it.\n",
        outcomes.len() - converted
    );
    for (path, converted) in outcomes {
        let word = if *converted { "converted" } else { "refused" };
        text.push_str(&format!("{word}\t{path}\n"));
    }
    text
}

/// What one file did.
enum Outcome {
    /// Converted and checked; PSNR against the reference where one exists.
    Converted { psnr: Option<f64> },
    /// Refused with an error.
    Refused,
}

fn check(root: &std::path::Path, entry: &Entry) -> Result<Outcome, String> {
    let data = std::fs::read(root.join(&entry.path)).map_err(|e| format!("cannot read: {e}"))?;
    let result = catch_unwind(AssertUnwindSafe(|| convert(&data, &Options::default()))).map_err(
        |panic| {
            format!(
                "PANICKED: {:?}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or(panic.downcast_ref::<&str>().copied())
            )
        },
    )?;
    let converted = match (entry.expect.as_str(), result) {
        ("reject", Ok(c)) => {
            return Err(format!(
                "accepted a file marked reject ({}x{})",
                c.width, c.height
            ));
        }
        ("ok", Err(e)) => return Err(format!("refused a file marked ok: {e}")),
        (_, Err(_)) => return Ok(Outcome::Refused),
        (_, Ok(c)) => c,
    };
    // Whatever was accepted must be a one-channel JPEG that displays at the source's size.
    let output = decode_output(&converted.data)?;
    if output.channels != 1 {
        return Err(format!(
            "output has {} channels, expected 1",
            output.channels
        ));
    }
    let stored = (output.gray.width as u32, output.gray.height as u32);
    let displayed = if output.orientation >= 5 {
        (stored.1, stored.0)
    } else {
        stored
    };
    if displayed != entry.displayed() {
        return Err(format!(
            "output displays at {}x{} (stored {}x{}, orientation {}), the source at {}x{}",
            displayed.0,
            displayed.1,
            stored.0,
            stored.1,
            output.orientation,
            entry.displayed().0,
            entry.displayed().1
        ));
    }
    if entry.expect != "ok" {
        return Ok(Outcome::Converted { psnr: None });
    }
    // Compare as displayed: the output may be turned upright or carry the tag.
    let reference = reference_luma(&data)
        .map_err(|e| format!("reference decoder failed: {e}"))?
        .displayed(entry.orientation());
    let shown = output.gray.displayed(output.orientation);
    if (reference.width, reference.height) != (shown.width, shown.height) {
        return Err(format!(
            "output displays as {}x{}, the reference as {}x{}",
            shown.width, shown.height, reference.width, reference.height
        ));
    }
    Ok(Outcome::Converted {
        psnr: Some(psnr(&shown, &reference)),
    })
}

#[test]
fn every_manifest_entry_behaves_as_expected() {
    let Some(root) = support::corpus() else {
        return;
    };
    let entries = manifest(&root);
    assert!(
        entries.len() > 600,
        "the manifest lists {} files, expected the whole corpus",
        entries.len()
    );
    let pool = Pool::new(0).expect("pool");
    let outcomes = pool.map(&entries, |entry| check(&root, entry));

    let mut failures = Vec::new();
    let mut by_class: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let (mut refused, mut converted) = (0, 0);
    let mut either = Vec::new();
    for (entry, outcome) in entries.iter().zip(&outcomes) {
        if entry.expect == "either"
            && let Ok(outcome) = outcome
        {
            either.push((
                entry.path.as_str(),
                matches!(outcome, Outcome::Converted { .. }),
            ));
        }
        match outcome {
            Err(reason) => failures.push(format!("{} [{}]: {reason}", entry.path, entry.expect)),
            Ok(Outcome::Refused) => refused += 1,
            Ok(Outcome::Converted { psnr }) => {
                converted += 1;
                let Some(db) = *psnr else { continue };
                let class = entry.class();
                // Per class, measured on this corpus (see `cloudimg_reference::min_db`).
                let bound = cloudimg_reference::min_db(&class);
                if db < bound {
                    failures.push(format!(
                        "{} [ok]: PSNR {db:.2} dB, below the bound of {bound} dB for {class}",
                        entry.path
                    ));
                }
                if std::env::var_os("CONFORMANCE_LIST").is_some() {
                    println!("{db:8.2} {}", entry.path);
                }
                by_class.entry(class).or_default().push(db);
            }
        }
    }
    println!(
        "{converted} converted, {refused} refused, {} mismatches",
        failures.len()
    );
    println!(
        "{:<40} {:>5} {:>9} {:>9}",
        "class (ok files)", "files", "min dB", "mean dB"
    );
    for (class, dbs) in &by_class {
        let finite: Vec<f64> = dbs.iter().copied().filter(|d| d.is_finite()).collect();
        let min = dbs.iter().copied().fold(f64::INFINITY, f64::min);
        let mean = if finite.is_empty() {
            f64::INFINITY
        } else {
            finite.iter().sum::<f64>() / finite.len() as f64
        };
        println!("{class:<40} {:>5} {min:>9.2} {mean:>9.2}", dbs.len());
    }
    let listing = either_listing(&either);
    let pinned_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(EITHER_PINNED);
    if std::env::var_os("CLOUDIMG_UPDATE_EITHER").is_some() {
        std::fs::write(&pinned_path, &listing).expect("write the pinned either list");
    }
    let pinned = std::fs::read_to_string(&pinned_path).unwrap_or_default();
    if pinned != listing {
        let lines = |t: &str| -> Vec<String> { t.lines().map(str::to_owned).collect() };
        let (now, then) = (lines(&listing), lines(&pinned));
        let mut diff: Vec<String> = then
            .iter()
            .filter(|l| !now.contains(l))
            .map(|l| format!("- {l}"))
            .collect();
        diff.extend(
            now.iter()
                .filter(|l| !then.contains(l))
                .map(|l| format!("+ {l}")),
        );
        failures.push(format!(
            "the `either` files' outcomes differ from engine/{EITHER_PINNED}:\n{}\n\
             If the change is meant, rewrite it with CLOUDIMG_UPDATE_EITHER=1 cargo test -p \
             cloudimg-engine --test conformance, commit the diff and update the counts in docs/tests.md.",
            diff.join("\n")
        ));
    }
    if let Some(bench) = by_class.get("bench") {
        let mean = bench.iter().sum::<f64>() / bench.len() as f64;
        if mean < SEED_MEAN_DB - 0.3 {
            failures.push(format!("mean PSNR over bench/ is {mean:.2} dB, more than 0.3 dB below the seed's {SEED_MEAN_DB}"));
        }
    } else {
        failures.push("no bench/ photo was checked".into());
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
