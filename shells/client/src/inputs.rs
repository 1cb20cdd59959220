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

/// Whether a file name has an image extension we look for in folders (jpg, jpeg, png, any case).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
}

/// Files are taken as given (whatever their extension: the engine sniffs the bytes); folders are
/// walked recursively for jpg/jpeg/png files, in sorted order so runs are reproducible.
pub fn collect(paths: &[PathBuf]) -> (Vec<Input>, Vec<Refused>) {
    let mut inputs = Vec::new();
    let mut refused = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => walk(path, path, &mut inputs, &mut refused),
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
    (inputs, refused)
}

fn walk(root: &Path, dir: &Path, inputs: &mut Vec<Input>, refused: &mut Vec<Refused>) {
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
            Ok(m) if m.is_dir() => walk(root, &path, inputs, refused),
            Ok(_) if has_image_extension(&path) => {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                inputs.push(Input {
                    shown: path.display().to_string(),
                    out_stem: rel.with_extension(""),
                    path,
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_extensions_in_any_case() {
        for name in ["a.jpg", "a.JPG", "a.jpeg", "a.JpEg", "a.png", "a.PNG"] {
            assert!(has_image_extension(Path::new(name)), "{name}");
        }
        for name in ["a.gif", "a", "a.jpg.txt", "jpg"] {
            assert!(!has_image_extension(Path::new(name)), "{name}");
        }
    }
}
