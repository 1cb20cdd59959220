//! `cloudimg convert` as a user runs it: the binary, fixtures made here, outputs checked.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cloudimg_reference::Gray;

struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "cloudimg-convert-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn write(&self, rel: &str, data: &[u8]) -> PathBuf {
        let path = self.path(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jpeg(width: u16, height: u16) -> Vec<u8> {
    let w = width as usize;
    let rgb: Vec<u8> = (0..w * height as usize * 3)
        .map(|i| ((i / 3 % w * 3 + i / 3 / w + i % 3 * 50) % 256) as u8)
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// The classic 1x1 GIF: one transparent pixel.
const GIF_1X1: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";

/// A 24-bit bottom-up BMP of `width` x `height` gray pixels.
fn bmp(width: u32, height: u32) -> Vec<u8> {
    let stride = (width as usize * 3).div_ceil(4) * 4;
    let size = 54 + stride * height as usize;
    let mut out = b"BM".to_vec();
    out.extend_from_slice(&(size as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&54u32.to_le_bytes());
    out.extend_from_slice(&40u32.to_le_bytes());
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&height.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&24u16.to_le_bytes());
    out.extend_from_slice(&[0; 24]);
    out.resize(size, 0x80);
    out
}

fn cloudimg(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cloudimg"))
        .current_dir(dir)
        .args(args)
        .env_remove("CLOUDIMG_PRODUCER")
        .output()
        .unwrap()
}

/// The luma a result of `jpeg` must show, from a decoder the engine does not use.
fn luma_of(jpeg: &[u8]) -> Gray {
    cloudimg_reference::reference_luma(jpeg).expect("the fixture decodes")
}

/// A flat gray image: what a flat source must give.
fn flat(width: usize, height: usize, level: u8) -> Gray {
    Gray {
        width,
        height,
        pixels: vec![level; width * height],
    }
}

/// Holds the result at `path` to what it must show: decoded whole by an independent decoder,
/// one gray channel, `want`'s size, and `want`'s picture (luma PSNR at least 30 dB), so a blank,
/// swapped or cut result fails, not only a wrong size.
fn landed(path: &Path, want: &Gray) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let output = cloudimg_reference::decode_output(&data)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shown = output.gray.displayed(output.orientation);
    assert_eq!(
        (output.channels, shown.width, shown.height),
        (1, want.width, want.height),
        "{}: channels and displayed size",
        path.display()
    );
    let db = cloudimg_reference::psnr(&shown, want);
    assert!(
        db >= 30.0,
        "{}: {db:.1} dB from the source's luma",
        path.display()
    );
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_file_given_directly_lands_as_its_stem_in_gray_by_default() {
    let t = TempDir::new("direct");
    t.write("photos/Holiday Photo.JPEG", &jpeg(40, 30));
    let out = cloudimg(&t.0, &["convert", "photos/Holiday Photo.JPEG"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(files_under(&t.path("gray")), ["Holiday Photo.jpg"]);
    landed(&t.path("gray/Holiday Photo.jpg"), &luma_of(&jpeg(40, 30)));
}

#[test]
fn dots_in_a_name_are_kept_and_never_make_two_files_collide() {
    let t = TempDir::new("dots");
    t.write("nokia-8.3-5g.jpg", &jpeg(12, 8));
    t.write("scan.v1.jpg", &jpeg(8, 8));
    t.write("scan.v2.jpg", &jpeg(8, 12));
    let out = cloudimg(
        &t.0,
        &["convert", "nokia-8.3-5g.jpg", "scan.v1.jpg", "scan.v2.jpg"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        files_under(&t.path("gray")),
        ["nokia-8.3-5g.jpg", "scan.v1.jpg", "scan.v2.jpg"]
    );
    landed(&t.path("gray/scan.v2.jpg"), &luma_of(&jpeg(8, 12)));
}

#[test]
fn folders_are_walked_recursively_keeping_relative_paths() {
    let t = TempDir::new("folders");
    t.write("in/a.jpg", &jpeg(8, 8));
    t.write("in/sub/deeper/B.JPG", &jpeg(16, 9));
    t.write("in/sub/c.jpeg", &jpeg(9, 16));
    t.write("in/notes.txt", b"not an image");
    t.write("in/sub/d.gif", GIF_1X1);
    t.write("in/E.Bmp", &bmp(5, 3));
    let out = cloudimg(&t.0, &["convert", "--out", "out", "in"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        files_under(&t.path("out")),
        [
            "E.jpg",
            "a.jpg",
            "sub/c.jpg",
            "sub/d.jpg",
            "sub/deeper/B.jpg"
        ]
    );
    landed(&t.path("out/sub/deeper/B.jpg"), &luma_of(&jpeg(16, 9)));
    // Mid-gray BMP pixels; the GIF's one pixel is transparent, shown over white.
    landed(&t.path("out/E.jpg"), &flat(5, 3, 0x80));
    landed(&t.path("out/sub/d.jpg"), &flat(1, 1, 255));
    // Every other file is reported, never silently ignored.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("skipped:") && l.contains("notes.txt")),
        "{stderr}"
    );
    assert!(stderr.contains("1 other files skipped"), "{stderr}");
}

#[test]
fn a_run_that_converts_nothing_it_was_given_exits_1() {
    let t = TempDir::new("none");
    t.write("in/readme.txt", b"not an image");
    t.write("in/data.csv", b"a,b");
    let out = cloudimg(&t.0, &["convert", "--out", "out", "in"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("converted 0 of 0"), "{stderr}");
    assert!(stderr.contains("2 other files skipped"), "{stderr}");
}

#[test]
fn an_output_name_taken_in_this_run_is_an_error_never_an_overwrite() {
    let t = TempDir::new("collide");
    t.write("x/photo.jpg", &jpeg(10, 10));
    t.write("y/photo.jpg", &jpeg(20, 20));
    t.write("z/pic.jpg", &jpeg(12, 12));
    t.write("z/pic.png", b"\x89PNG\r\n\x1a\n");
    let out = cloudimg(
        &t.0,
        &["convert", "--out", "out", "x/photo.jpg", "y/photo.jpg", "z"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("y/photo.jpg") && stderr.contains("already taken"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pic.png") && stderr.contains("already taken"),
        "{stderr}"
    );
    // The first claimant's output is intact.
    landed(&t.path("out/photo.jpg"), &luma_of(&jpeg(10, 10)));
    landed(&t.path("out/pic.jpg"), &luma_of(&jpeg(12, 12)));
}

#[test]
fn a_bad_file_is_named_with_its_reason_and_the_rest_still_convert() {
    let t = TempDir::new("bad");
    let mut truncated = jpeg(64, 64);
    truncated.truncate(truncated.len() / 2);
    t.write("in/good.jpg", &jpeg(32, 32));
    t.write("in/broken.jpg", &truncated);
    t.write("in/fake.png", b"this is text");
    let out = cloudimg(&t.0, &["convert", "-o", "out", "in", "missing.jpg"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for name in ["broken.jpg", "fake.png", "missing.jpg"] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("error:") && l.contains(name)),
            "{name} not reported: {stderr}"
        );
    }
    assert_eq!(files_under(&t.path("out")), ["good.jpg"]);
}

#[test]
fn png_output_and_quality_settings() {
    let t = TempDir::new("png");
    t.write("a.jpg", &jpeg(24, 12));
    let out = cloudimg(&t.0, &["convert", "--format", "png", "-o", "out", "a.jpg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A whole gray PNG (decoded by the png crate, not only its signature) holding the source's
    // luma: PNG is lossless, so only the decoders' rounding separates them.
    let png = std::fs::read(t.path("out/a.png")).unwrap();
    let output = cloudimg_reference::decode_output(&png).unwrap();
    assert_eq!(
        (output.channels, output.gray.width, output.gray.height),
        (1, 24, 12)
    );
    let source = cloudimg_reference::reference_luma(&jpeg(24, 12)).unwrap();
    let db = cloudimg_reference::psnr(&output.gray, &source);
    assert!(db > 40.0, "the PNG is {db:.1} dB from its source's luma");

    let out = cloudimg(&t.0, &["convert", "-q", "source", "-o", "src", "a.jpg"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    landed(&t.path("src/a.jpg"), &luma_of(&jpeg(24, 12)));
    let low = cloudimg(&t.0, &["convert", "-q", "5", "-o", "low", "a.jpg"]);
    assert!(low.status.success());
    assert!(
        std::fs::metadata(t.path("low/a.jpg")).unwrap().len()
            < std::fs::metadata(t.path("src/a.jpg")).unwrap().len()
    );
    for bad in ["0", "101", "best"] {
        let out = cloudimg(&t.0, &["convert", "-q", bad, "a.jpg"]);
        assert_eq!(out.status.code(), Some(2), "quality {bad} was accepted");
    }
}
