//! The reference for the formats beyond JPEG and PNG: pinned Pillow (13.0.0, what the old system
//! ran), through `pillow_ref.py`, which writes each file's luma as Pillow shows it and the PSNR
//! of Pillow's own grayscale JPEG. Never our decoder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::Gray;

/// The pinned versions (Pillow, and pillow-heif for HEIC); `scripts/test.sh` installs them.
pub const PILLOW: &str = "13.0.0";
pub const PILLOW_HEIF: &str = "1.1.1";

/// What Pillow shows for one file.
pub struct Reference {
    pub luma: Gray,
    /// PSNR of `Image.open(f).convert("L").save(out, quality=q)` against `luma`.
    pub pillow_psnr: f64,
}

/// Whether `python3` with the pinned Pillow and pillow-heif is here; a skip (failing under CI) where not.
pub fn available() -> bool {
    let found = Command::new("python3")
        .args([
            "-c",
            "import PIL, pillow_heif; print(PIL.__version__, pillow_heif.__version__)",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match found {
        Some(v) if v == format!("{PILLOW} {PILLOW_HEIF}") => true,
        other => super::skip::<()>(&format!(
            "python3 with Pillow {PILLOW} and pillow-heif {PILLOW_HEIF} is needed for the \
             reference (found {other:?}); pip install pillow=={PILLOW} pillow-heif=={PILLOW_HEIF}"
        ))
        .is_some(),
    }
}

/// Pillow's reference for each path, in order (an error where Pillow cannot open it).
pub fn references(paths: &[PathBuf], quality: u8) -> Vec<Result<Reference, String>> {
    let out = std::env::temp_dir().join(format!(
        "cloudimg-pillow-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&out).expect("create the reference folder");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pillow_ref.py");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(&out)
        .arg(quality.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start pillow_ref.py");
    let mut list = String::new();
    for path in paths {
        list.push_str(&path.to_string_lossy());
        list.push('\n');
    }
    let mut stdin = child.stdin.take().expect("stdin");
    // Written from a thread: the script answers as it reads, and a full pipe must not block us.
    let writer = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let output = child.wait_with_output().expect("pillow_ref.py runs");
    writer.join().expect("writer").expect("write the paths");
    assert!(output.status.success(), "pillow_ref.py failed");
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    let mut results: Vec<Result<Reference, String>> = (0..paths.len())
        .map(|_| Err("no answer from pillow_ref.py".to_string()))
        .collect();
    for line in text.lines() {
        let field = |name: &str| -> Option<String> {
            let start = line.find(&format!("\"{name}\": "))? + name.len() + 4;
            let rest = &line[start..];
            let end = rest.find([',', '}'])?;
            Some(rest[..end].trim_matches('"').to_string())
        };
        let n: usize = field("n").and_then(|v| v.parse().ok()).expect("an index");
        if let Some(error) = field("error") {
            results[n] = Err(error);
            continue;
        }
        let number = |name| field(name).and_then(|v| v.parse::<f64>().ok()).expect(name);
        let (width, height) = (number("width") as usize, number("height") as usize);
        let raw = out.join(format!("{n}.raw"));
        let pixels = std::fs::read(&raw).expect("read a reference");
        assert_eq!(pixels.len(), width * height, "{}", raw.display());
        results[n] = Ok(Reference {
            luma: Gray {
                width,
                height,
                pixels,
            },
            pillow_psnr: number("pillow_psnr"),
        });
    }
    let _ = std::fs::remove_dir_all(&out);
    results
}
