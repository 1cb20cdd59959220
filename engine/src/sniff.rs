//! Recognising the input format by its first bytes, never by a file name.

use crate::error::{Error, Result};

/// An input format the engine converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
        })
    }
}

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Names the format of `data` from its signature. Cheap: shells call it to refuse non-images early.
pub fn sniff(data: &[u8]) -> Result<Format> {
    // A JPEG starts with the SOI marker; whatever follows is the JPEG reader's to judge.
    if data.starts_with(&[0xFF, 0xD8]) {
        return Ok(Format::Jpeg);
    }
    if data.starts_with(PNG_SIGNATURE) {
        return Ok(Format::Png);
    }
    Err(Error::unsupported(format!(
        "expected a JPEG (FF D8) or PNG signature, found {}",
        describe(data)
    )))
}

/// A human name for what the bytes look like, for error messages.
fn describe(data: &[u8]) -> String {
    let known: &[(&[u8], usize, &str)] = &[
        (b"GIF87a", 0, "a GIF image"),
        (b"GIF89a", 0, "a GIF image"),
        (b"BM", 0, "a BMP image"),
        (b"WEBP", 8, "a WebP image"),
        (b"II*\0", 0, "a TIFF image"),
        (b"MM\0*", 0, "a TIFF image"),
        (b"ftypavif", 4, "an AVIF image"),
        (b"ftypheic", 4, "a HEIC image"),
        (b"ftypmif1", 4, "a HEIF image"),
        (b"\0\0\0\x0cjXL ", 0, "a JPEG XL image"),
        (&[0xFF, 0x0A], 0, "a JPEG XL image"),
        (b"%PDF", 0, "a PDF document"),
        (
            &[0xFF, 0xD8],
            0,
            "a JPEG start marker without a following marker",
        ),
    ];
    if data.is_empty() {
        return "an empty file".into();
    }
    for (magic, offset, name) in known {
        if data.get(*offset..offset + magic.len()) == Some(magic) {
            return (*name).into();
        }
    }
    let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02X}")).collect();
    format!("bytes {}", head.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_it_found() {
        let err = sniff(b"GIF89a....").unwrap_err().to_string();
        assert!(err.contains("GIF"), "{err}");
        let err = sniff(b"").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = sniff(b"RIFF\0\0\0\0WEBPVP8 ").unwrap_err().to_string();
        assert!(err.contains("WebP"), "{err}");
        let err = sniff(b"hello").unwrap_err().to_string();
        assert!(err.contains("68 65 6C 6C 6F"), "{err}");
    }

    #[test]
    fn recognises_jpeg_and_png() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]).unwrap(), Format::Jpeg);
        assert_eq!(sniff(PNG_SIGNATURE).unwrap(), Format::Png);
    }
}
