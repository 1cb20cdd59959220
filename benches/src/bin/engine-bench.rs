//! `engine-bench`: the engine's throughput over a set of images, with the time per stage.
//!
//! Each image is read, converted and (with `--out`) written inside one pool task, so the wall
//! time covers what a batch job does; stage times are summed over images (CPU time per stage).

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use cloudimg_engine::batch::Pool;
use cloudimg_engine::{ConversionPath, Options, PathChoice, Quality, Stage, StageTimes};

/// Converts images to grayscale JPEG with the cloudimg engine and reports throughput.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Engine threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output quality, 1 to 100, or `source` to keep a JPEG's own quantization.
    #[arg(long, default_value = "85", value_parser = Quality::parse)]
    quality: Quality,
    /// Write each output as DIR/<input stem>.jpg.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Also write the summary as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Read input paths, one per line, from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "paths")]
    list: Option<PathBuf>,
    /// Force the pixel path for every JPEG (to compare with the coefficient path).
    #[arg(long)]
    pixels: bool,
    /// Input images.
    #[arg(required_unless_present = "list")]
    paths: Vec<PathBuf>,
}

/// What one image cost.
struct Outcome {
    megapixels: f64,
    stages: StageTimes,
    path: ConversionPath,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("engine-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn inputs(args: &Args) -> Result<Vec<PathBuf>, String> {
    match &args.list {
        Some(list) => Ok(std::fs::read_to_string(list)
            .map_err(|e| format!("cannot read the list {}: {e}", list.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect()),
        None => Ok(args.paths.clone()),
    }
}

/// Output paths by input, refusing two inputs with the same stem (never an overwrite).
fn outputs(inputs: &[PathBuf], dir: &Path) -> Vec<Result<PathBuf, String>> {
    let mut taken = HashSet::new();
    inputs
        .iter()
        .map(|input| {
            let stem = input.file_stem().unwrap_or(input.as_os_str());
            let mut name = stem.to_os_string();
            name.push(".jpg");
            let out = dir.join(name);
            if taken.insert(out.clone()) {
                Ok(out)
            } else {
                Err(format!(
                    "output {} is already taken in this run",
                    out.display()
                ))
            }
        })
        .collect()
}

fn convert_one(
    input: &Path,
    output: Option<&Result<PathBuf, String>>,
    options: &Options,
) -> Result<Outcome, String> {
    let output = output.map(|o| o.as_ref()).transpose()?;
    let data = std::fs::read(input).map_err(|e| format!("cannot read: {e}"))?;
    let converted = cloudimg_engine::convert(&data, options).map_err(|e| e.to_string())?;
    if let Some(path) = output {
        std::fs::write(path, &converted.data)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(Outcome {
        megapixels: f64::from(converted.source.width) * f64::from(converted.source.height) / 1e6,
        stages: converted.stages,
        path: converted.path,
    })
}

fn run(args: &Args) -> Result<bool, String> {
    let inputs = inputs(args)?;
    if inputs.is_empty() {
        return Err("no input images".into());
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let outputs = args.out.as_deref().map(|dir| outputs(&inputs, dir));
    let options = Options {
        quality: args.quality,
        path: if args.pixels {
            PathChoice::Pixels
        } else {
            PathChoice::Auto
        },
        ..Options::default()
    };
    let pool = Pool::new(args.threads).map_err(|e| format!("cannot start the thread pool: {e}"))?;
    // Largest first, so the pool's last task is a small image (see `Pool::map`).
    let mut indexed: Vec<usize> = (0..inputs.len()).collect();
    let size = |i: &usize| std::fs::metadata(&inputs[*i]).map_or(0, |m| m.len());
    indexed.sort_by_key(|i| std::cmp::Reverse(size(i)));
    let start = Instant::now();
    let scheduled = pool.map(&indexed, |&i| {
        convert_one(&inputs[i], outputs.as_ref().map(|o| &o[i]), &options)
    });
    let wall = start.elapsed();
    let mut results: Vec<Option<Result<Outcome, String>>> = inputs.iter().map(|_| None).collect();
    for (i, result) in indexed.into_iter().zip(scheduled) {
        results[i] = Some(result);
    }
    let results = results
        .into_iter()
        .map(|r| r.expect("every input was scheduled"));

    let mut stages = StageTimes::default();
    let (mut megapixels, mut images, mut coefficient_images) = (0.0, 0usize, 0usize);
    let mut failures = Vec::new();
    for (input, result) in inputs.iter().zip(results) {
        match result {
            Ok(outcome) => {
                megapixels += outcome.megapixels;
                images += 1;
                coefficient_images += usize::from(outcome.path == ConversionPath::Coefficients);
                stages += outcome.stages;
            }
            Err(e) => {
                eprintln!("failed: {}: {e}", input.display());
                failures
                    .push(serde_json::json!({ "file": input.display().to_string(), "error": e }));
            }
        }
    }
    let secs = wall.as_secs_f64();
    let simd = cloudimg_engine::simd_path();
    println!(
        "images        {images} ({coefficient_images} on the coefficient path, {} on the pixel path)",
        images - coefficient_images
    );
    println!("megapixels    {megapixels:.1}");
    println!("wall time     {secs:.3} s");
    println!(
        "throughput    {:.1} MP/s, {:.2} images/s",
        megapixels / secs,
        images as f64 / secs
    );
    println!("threads       {}", pool.threads());
    println!("simd path     {simd}");
    println!("quality       {}", args.quality);
    let total: Duration = Stage::ALL.iter().map(|&s| stages.get(s)).sum();
    for stage in Stage::ALL {
        let time = stages.get(stage);
        if !time.is_zero() {
            println!(
                "  {:<15} {:>8.3} s  {:>5.1}%  {:>7.1} MP/s per thread",
                stage.name(),
                time.as_secs_f64(),
                100.0 * time.as_secs_f64() / total.as_secs_f64(),
                megapixels / time.as_secs_f64()
            );
        }
    }
    if coefficient_images > 0 {
        println!(
            "  (requantization runs inside the entropy encoder's loop; its time is part of `entropy encode`)"
        );
    }
    if !failures.is_empty() {
        println!("failures      {}", failures.len());
    }
    if let Some(path) = &args.json {
        let stage_json: serde_json::Map<String, serde_json::Value> = Stage::ALL
            .iter()
            .map(|&s| (s.name().to_string(), stages.get(s).as_secs_f64().into()))
            .collect();
        let summary = serde_json::json!({
            "images": images,
            "coefficient_path_images": coefficient_images,
            "megapixels": megapixels,
            "wall_s": secs,
            "mp_per_s": megapixels / secs,
            "images_per_s": images as f64 / secs,
            "threads": pool.threads(),
            "simd": simd.name(),
            "quality": args.quality.to_string(),
            "stages_s": stage_json,
            "failures": failures,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&summary).expect("json") + "\n",
        )
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(failures.is_empty())
}
