//! Turning the paths a user typed into the images to process.

use std::path::{Path, PathBuf};

/// One image to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file to read.
    pub path: PathBuf,
    /// The path as given, or as found inside a given folder (what reports show).
    pub shown: String,
    /// The output name without extension: the stem for a file given directly, the path relative to
    /// the folder for a file found in one.
    pub out_stem: PathBuf,
}

/// A path that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub shown: String,
    pub reason: String,
}

/// The extensions looked for in folders, any case (ARCHITECTURE.md's contract). Only the choice of
/// files goes by name: the engine decides each file's format from its bytes.
pub const IMAGE_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "webp", "avif", "heic", "heif", "gif", "tif", "tiff", "bmp", "ico",
];

/// Whether a file name has one of [`IMAGE_EXTENSIONS`], in any case.
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// What the paths a user typed hold.
#[derive(Debug, Default)]
pub struct Collected {
    /// The images to process.
    pub inputs: Vec<Input>,
    /// Paths that could not be read.
    pub refused: Vec<Refused>,
    /// Files found in folders without an image extension, as shown: reported, never silently
    /// ignored.
    pub skipped: Vec<String>,
}

/// What a report says about a skipped file.
pub const SKIPPED_REASON: &str = "not an image by its extension (jpg, jpeg, png, webp, avif, heic, heif, gif, tif, tiff, bmp, ico)";

/// Files are taken as given (whatever their extension: the engine sniffs the bytes); folders are
/// walked recursively for files with an image extension, in sorted order so runs are
/// reproducible, and every other file found is listed as skipped.
pub fn collect(paths: &[PathBuf]) -> Collected {
    let mut collected = Collected::default();
    let Collected {
        inputs,
        refused,
        skipped,
    } = &mut collected;
    for path in paths {
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => walk(path, path, inputs, refused, skipped),
            Ok(_) => {
                let stem = path.file_stem().map(PathBuf::from).unwrap_or_default();
                inputs.push(Input {
                    path: path.clone(),
                    shown,
                    out_stem: stem,
                });
            }
            Err(e) => refused.push(Refused {
                shown,
                reason: format!("cannot read: {e}"),
            }),
        }
    }
    collected
}

fn walk(
    root: &Path,
    dir: &Path,
    inputs: &mut Vec<Input>,
    refused: &mut Vec<Refused>,
    skipped: &mut Vec<String>,
) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            refused.push(Refused {
                shown: dir.display().to_string(),
                reason: format!("cannot list folder: {e}"),
            });
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        // Follows symlinks, like `ls -L`: a linked folder is walked.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(root, &path, inputs, refused, skipped),
            Ok(_) if has_image_extension(&path) => {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                inputs.push(Input {
                    shown: path.display().to_string(),
                    out_stem: rel.with_extension(""),
                    path,
                });
            }
            Ok(_) => skipped.push(path.display().to_string()),
            Err(e) => refused.push(Refused {
                shown: path.display().to_string(),
                reason: format!("cannot read: {e}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_extensions_in_any_case() {
        for name in [
            "a.jpg", "a.JPG", "a.jpeg", "a.JpEg", "a.png", "a.PNG", "a.webp", "a.WebP", "a.avif",
            "a.heic", "a.HEIF", "a.gif", "a.tif", "a.TIFF", "a.bmp", "a.Ico",
        ] {
            assert!(has_image_extension(Path::new(name)), "{name}");
        }
        for name in ["a.txt", "a", "a.jpg.txt", "jpg", "a.svg", "a.cur", "a.jxl"] {
            assert!(!has_image_extension(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn folders_list_every_other_file_as_skipped() {
        let dir = std::env::temp_dir().join(format!("cloudimg-inputs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for name in ["a.webp", "b.txt", "sub/c.GIF", "sub/d.cur"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let collected = collect(std::slice::from_ref(&dir));
        let found: Vec<_> = collected
            .inputs
            .iter()
            .map(|i| i.out_stem.clone())
            .collect();
        assert_eq!(found, [PathBuf::from("a"), PathBuf::from("sub/c")]);
        let skipped: Vec<_> = collected
            .skipped
            .iter()
            .map(|s| Path::new(s).strip_prefix(&dir).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            skipped,
            [PathBuf::from("b.txt"), PathBuf::from("sub/d.cur")]
        );
        assert!(collected.refused.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
