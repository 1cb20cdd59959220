//! Recognising the input format by its first bytes, never by a file name.

use crate::error::{Error, Result};

/// An input format the engine converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Jpeg,
    Png,
    WebP,
    Gif,
    Bmp,
    Ico,
    Tiff,
    /// AV1 in the HEIF container.
    Avif,
    /// HEVC in the HEIF container (HEIC, and HEIF files of HEIC brands).
    Heic,
}

impl Format {
    /// The media type a sender would label this format with.
    pub fn mime_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
            Format::Gif => "image/gif",
            Format::Bmp => "image/bmp",
            Format::Ico => "image/vnd.microsoft.icon",
            Format::Tiff => "image/tiff",
            Format::Avif => "image/avif",
            Format::Heic => "image/heic",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
            Format::WebP => "WebP",
            Format::Gif => "GIF",
            Format::Bmp => "BMP",
            Format::Ico => "ICO",
            Format::Tiff => "TIFF",
            Format::Avif => "AVIF",
            Format::Heic => "HEIC",
        })
    }
}

pub(crate) const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// The bytes [`sniff`] needs to recognise every format: a WebP's `WEBP` ends at byte 12, a HEIF
/// file of the generic `mif1` brand names its codec among the compatible brands after it (byte 32
/// holds the third). A shorter prefix of a longer file may be refused as unrecognised: callers
/// sniffing a stream wait for this many bytes (or the whole file).
pub const SNIFF_BYTES: usize = 32;

/// Signatures, at their offsets, of the formats the engine converts. One table: [`sniff`] matches
/// it, the error message lists it.
const SIGNATURES: &[(&[u8], usize, Format)] = &[
    // A JPEG starts with the SOI marker; whatever follows is the JPEG reader's to judge.
    (&[0xFF, 0xD8], 0, Format::Jpeg),
    (PNG_SIGNATURE, 0, Format::Png),
    (b"WEBP", 8, Format::WebP),
    (b"GIF87a", 0, Format::Gif),
    (b"GIF89a", 0, Format::Gif),
    // As Pillow: two bytes; the header size after them is the BMP reader's to judge.
    (b"BM", 0, Format::Bmp),
    // An ICONDIR: reserved 0, type 1 (icon). Cursors (type 2) are another format.
    (&[0, 0, 1, 0], 0, Format::Ico),
    // Either byte order, classic (42) or BigTIFF (43).
    (b"II*\0", 0, Format::Tiff),
    (b"MM\0*", 0, Format::Tiff),
    (b"II+\0", 0, Format::Tiff),
    (b"MM\0+", 0, Format::Tiff),
];

/// Names the format of `data` from its signature. Cheap: shells call it to refuse non-images early.
pub fn sniff(data: &[u8]) -> Result<Format> {
    for (magic, offset, format) in SIGNATURES {
        if data.get(*offset..offset + magic.len()) == Some(magic) {
            // RIFF is the container a WebP lives in; WEBP at 8 alone could be anything.
            if *format == Format::WebP && !data.starts_with(b"RIFF") {
                continue;
            }
            return Ok(*format);
        }
    }
    if let Some(format) = heif_format(data) {
        return Ok(format);
    }
    Err(Error::unsupported(format!(
        "expected a JPEG, PNG, WebP, AVIF, HEIC, GIF, BMP, ICO or TIFF signature, found {}",
        describe(data)
    )))
}

/// The codec a HEIF file's `ftyp` names: its major brand, or (for the generic `mif1`/`msf1`)
/// the first compatible brand that names one, among the bytes there are.
pub(crate) fn heif_format(data: &[u8]) -> Option<Format> {
    if data.get(4..8) != Some(b"ftyp") {
        return None;
    }
    let size = u32::from_be_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    let ftyp = &data[..size.min(data.len())];
    let brand = |b: &[u8]| match b {
        b"avif" | b"avis" => Some(Format::Avif),
        b"heic" | b"heix" | b"heim" | b"heis" | b"hevc" | b"hevx" => Some(Format::Heic),
        _ => None,
    };
    let major = ftyp.get(8..12)?;
    brand(major).or_else(|| {
        matches!(major, b"mif1" | b"msf1")
            .then(|| ftyp.get(16..)?.chunks_exact(4).find_map(brand))
            .flatten()
    })
}

/// A human name for what the bytes look like, for error messages.
fn describe(data: &[u8]) -> String {
    let known: &[(&[u8], usize, &str)] = &[
        (
            b"ftypmif1",
            4,
            "a HEIF image of neither AVIF nor HEIC brand",
        ),
        (b"\0\0\0\x0cjXL ", 0, "a JPEG XL image"),
        (&[0xFF, 0x0A], 0, "a JPEG XL image"),
        (&[0, 0, 2, 0], 0, "a Windows cursor"),
        (b"%PDF", 0, "a PDF document"),
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
        let err = sniff(b"\0\0\0\x14ftypmif1\0\0\0\0jpeg")
            .unwrap_err()
            .to_string();
        assert!(err.contains("HEIF"), "{err}");
        let err = sniff(b"").unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = sniff(b"hello").unwrap_err().to_string();
        assert!(err.contains("68 65 6C 6C 6F"), "{err}");
        // WEBP at 8 without the RIFF container is not a WebP.
        let err = sniff(b"XXXX\0\0\0\0WEBPVP8 ").unwrap_err().to_string();
        assert!(err.contains("58 58 58 58"), "{err}");
    }

    #[test]
    fn recognises_every_format_by_content() {
        let cases: [(&[u8], Format); 13] = [
            (b"\0\0\0\x1cftypavif\0\0\0\0avifmif1", Format::Avif),
            (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic", Format::Heic),
            (b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic", Format::Heic),
            (&[0xFF, 0xD8, 0xFF, 0xE0], Format::Jpeg),
            (PNG_SIGNATURE, Format::Png),
            (b"RIFF\x10\0\0\0WEBPVP8 ", Format::WebP),
            (b"GIF87a\x01\0", Format::Gif),
            (b"GIF89a\x01\0", Format::Gif),
            (b"BM\0\0\0\0", Format::Bmp),
            (&[0, 0, 1, 0, 1, 0], Format::Ico),
            (&[0xFF, 0xD8], Format::Jpeg),
            (b"II*\0\x08\0\0\0", Format::Tiff),
            (b"MM\0+\0\x08\0\0", Format::Tiff),
        ];
        for (bytes, format) in cases {
            assert_eq!(sniff(bytes).unwrap(), format, "{bytes:?}");
        }
        let err = sniff(&[0, 0, 2, 0, 1, 0]).unwrap_err().to_string();
        assert!(err.contains("cursor"), "{err}");
    }
}
