//! `cloudimg convert`: local conversion on the engine's pool.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use cloudimg_engine::Options;
use cloudimg_engine::batch::Pool;
use indicatif::{ProgressBar, ProgressStyle};

use crate::inputs::{self, Refused};

/// What `convert` does, typed.
#[derive(Debug, Clone)]
pub struct ConvertConfig {
    pub paths: Vec<PathBuf>,
    pub out_dir: PathBuf,
    pub options: Options,
    /// Engine threads; 0 means one per core.
    pub threads: usize,
}

/// How a run went.
#[derive(Debug, Default)]
pub struct ConvertSummary {
    pub converted: usize,
    pub failed: Vec<Refused>,
    /// Files found in folders that are not images by their extension.
    pub skipped: Vec<String>,
}

impl ConvertSummary {
    /// Whether the run succeeded: nothing failed and something was converted (a run that
    /// converted none of what it was given has not done its job).
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.converted > 0
    }
}

struct Task {
    input: inputs::Input,
    output: PathBuf,
}

/// Converts every image, in parallel, reading, converting and writing inside the pool task so at
/// most `threads` images are in memory at once. Prints a progress bar on a terminal (plain lines
/// otherwise), each failure with its reason on stderr, and a summary.
pub fn run(config: &ConvertConfig) -> std::io::Result<ConvertSummary> {
    let started = Instant::now();
    let inputs::Collected {
        inputs: found,
        refused,
        skipped,
    } = inputs::collect(&config.paths);
    let mut summary = ConvertSummary {
        failed: refused,
        skipped,
        ..Default::default()
    };
    // Output names are decided up front, in input order: the first input to claim a name keeps
    // it, any later one is an error (never an overwrite of this run's own output).
    let ext = config.options.format.extension();
    let mut claimed: HashMap<PathBuf, String> = HashMap::new();
    let mut tasks = Vec::new();
    for input in found {
        // Appended, not `with_extension`: a stem may hold dots ("nokia-8.3-5g").
        let mut name = input.out_stem.clone().into_os_string();
        name.push(".");
        name.push(ext);
        let output = config.out_dir.join(name);
        match claimed.get(&output) {
            Some(first) => summary.failed.push(Refused {
                shown: input.shown.clone(),
                reason: format!(
                    "output {} is already taken in this run by {first}",
                    output.display()
                ),
            }),
            None => {
                claimed.insert(output.clone(), input.shown.clone());
                tasks.push(Task { input, output });
            }
        }
    }

    let pool = Pool::new(config.threads)?;
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::new(tasks.len() as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let options = config.options;
    let results = pool.map(&tasks, |task| {
        let result = convert_one(task, &options);
        bar.inc(1);
        if !terminal && result.is_ok() {
            println!("{} -> {}", task.input.shown, task.output.display());
        }
        result
    });
    bar.finish_and_clear();
    for (task, result) in tasks.iter().zip(results) {
        match result {
            Ok(()) => summary.converted += 1,
            Err(reason) => summary.failed.push(Refused {
                shown: task.input.shown.clone(),
                reason,
            }),
        }
    }
    for f in &summary.failed {
        eprintln!("error: {}: {}", f.shown, f.reason);
    }
    for shown in &summary.skipped {
        eprintln!("skipped: {shown}: {}", inputs::SKIPPED_REASON);
    }
    eprintln!(
        "converted {} of {} images to {} in {:.1}s{}{}",
        summary.converted,
        summary.converted + summary.failed.len(),
        config.out_dir.display(),
        started.elapsed().as_secs_f64(),
        if summary.failed.is_empty() {
            String::new()
        } else {
            format!("; {} failed", summary.failed.len())
        },
        if summary.skipped.is_empty() {
            String::new()
        } else {
            format!(
                "; {} other files skipped (not images by extension)",
                summary.skipped.len()
            )
        }
    );
    Ok(summary)
}

fn convert_one(task: &Task, options: &Options) -> Result<(), String> {
    let data = std::fs::read(&task.input.path).map_err(|e| format!("cannot read: {e}"))?;
    let converted = cloudimg_engine::convert(&data, options).map_err(|e| e.to_string())?;
    drop(data);
    if let Some(dir) = task.output.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&task.output, &converted.data)
        .map_err(|e| format!("cannot write {}: {e}", task.output.display()))
}
