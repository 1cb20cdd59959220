//! libjpeg-turbo's command-line tools as oracles (`djpeg`, `cjpeg`, `jpegtran`; Debian package
//! libjpeg-turbo-progs, which `scripts/test.sh` installs), and the corpus files they judge.

use std::process::{Command, Stdio};

use super::{Entry, Gray, skip};

/// `Some(())` where every tool runs; else a skip (a failure under `CI=true`).
pub fn tools(names: &[&str]) -> Option<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|tool| {
            Command::new(tool)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    skip(&format!(
        "libjpeg-turbo tools absent: {} (Debian: libjpeg-turbo-progs)",
        missing.join(", ")
    ))
}

/// Runs `tool args` with `input` on stdin; its stdout.
pub fn pipe(tool: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{tool}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child
        .wait_with_output()
        .map_err(|e| format!("{tool}: {e}"))?;
    // jpegtran and djpeg stop reading at the first image's end (an MPO holds more): a closed
    // pipe is fine.
    match writer.join().expect("writer") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(format!("{tool} stdin: {e}"));
        }
        _ => {}
    }
    if !output.status.success() {
        return Err(format!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(output.stdout)
}

/// libjpeg's decode of a JPEG's luma: `djpeg -grayscale -dct int` (the accurate integer IDCT).
pub fn djpeg_gray(jpeg: &[u8]) -> Result<Gray, String> {
    parse_pgm(&pipe(
        "djpeg",
        &["-grayscale", "-dct", "int", "-pnm"],
        jpeg,
    )?)
}

/// libjpeg's encode of an 8-bit gray plane: `cjpeg -grayscale -dct int -baseline -quality
/// <quality>`, with `-optimize` (Huffman tables fitted to the image) when asked. `-baseline`
/// clamps the quantization steps to 255 as the engine does; without it, below quality 25 cjpeg
/// writes 16-bit steps in an extended (SOF1) frame.
pub fn cjpeg_gray(gray: &Gray, quality: u8, optimize: bool) -> Result<Vec<u8>, String> {
    let mut pgm = format!("P5\n{} {}\n255\n", gray.width, gray.height).into_bytes();
    pgm.extend_from_slice(&gray.pixels);
    let quality = quality.to_string();
    let mut args = vec![
        "-grayscale",
        "-dct",
        "int",
        "-baseline",
        "-quality",
        &quality,
    ];
    if optimize {
        args.push("-optimize");
    }
    pipe("cjpeg", &args, &pgm)
}

/// A binary PGM (`P5`, maxval 255) as djpeg writes it.
pub fn parse_pgm(data: &[u8]) -> Result<Gray, String> {
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while data.get(at).is_some_and(u8::is_ascii_whitespace) {
            at += 1;
        }
        let start = at;
        while data.get(at).is_some_and(|b| !b.is_ascii_whitespace()) {
            at += 1;
        }
        if start == at {
            return Err("PGM header ends early".into());
        }
        fields.push(String::from_utf8_lossy(&data[start..at]).into_owned());
    }
    let number = |i: usize| -> Result<usize, String> {
        fields[i]
            .parse()
            .map_err(|_| format!("PGM field {}", fields[i]))
    };
    if fields[0] != "P5" || number(3)? != 255 {
        return Err(format!("not an 8-bit binary PGM: {fields:?}"));
    }
    let (width, height) = (number(1)?, number(2)?);
    let pixels = data[at + 1..].to_vec();
    if pixels.len() != width * height {
        return Err(format!(
            "PGM holds {} samples for {width}x{height}",
            pixels.len()
        ));
    }
    Ok(Gray {
        width,
        height,
        pixels,
    })
}

/// Huffman-coded 8-bit JPEGs (and MPOs) the manifest marks `ok`.
pub fn huffman_jpegs(entries: &[Entry]) -> Vec<Entry> {
    entries
        .iter()
        .filter(|e| {
            e.expect == "ok"
                && (e.path.to_ascii_lowercase().ends_with(".jpg") || e.path.ends_with(".mpo"))
                && e.detail("arithmetic") == Some("no")
                && e.detail("bitdepth") == Some("8")
        })
        .cloned()
        .collect()
}

/// Whether the engine is right to send this JPEG down the pixel path: only sources whose first
/// component is not full-resolution luma (RGB, CMYK, YCCK, or luma subsampled below chroma).
pub fn takes_pixels(entry: &Entry) -> bool {
    let kind = entry.detail("colorspace").unwrap_or("?");
    let luma_subsampled = entry
        .detail("subsampling")
        .is_some_and(|s| s.starts_with("custom") && !s.starts_with("custom:2x2"));
    matches!(kind, "RGB" | "CMYK" | "YCCK") || luma_subsampled
}
