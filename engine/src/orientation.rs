//! EXIF orientation: reading it from the source, carrying it into the output, and applying it to
//! pixels where the output cannot carry it.

/// The EXIF orientation tag (1 to 8): how a viewer must transform the stored pixels to display them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orientation(u8);

impl Default for Orientation {
    fn default() -> Self {
        Orientation::NORMAL
    }
}

impl Orientation {
    /// Stored pixels display as they are.
    pub const NORMAL: Orientation = Orientation(1);

    /// The tag value, 1 to 8.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The orientation of tag value `value` (1 to 8; anything else reads as normal).
    pub fn new(value: u8) -> Orientation {
        if (1..=8).contains(&value) {
            Orientation(value)
        } else {
            Orientation::NORMAL
        }
    }

    /// Whether displaying swaps width and height (the tags 5 to 8 turn by a quarter).
    pub fn swaps_dimensions(self) -> bool {
        self.value() >= 5
    }

    /// The displayed size of a `width` x `height` stored image.
    pub fn displayed(self, width: u32, height: u32) -> (u32, u32) {
        if self.swaps_dimensions() {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// Reads the orientation from raw EXIF (starting at the TIFF header). Anything missing,
    /// corrupt or out of range reads as normal: a broken tag never fails a conversion.
    pub fn from_exif(tiff: &[u8]) -> Orientation {
        let mut reader = exif::Reader::new();
        reader.continue_on_error(true);
        let parsed = reader
            .read_raw(tiff.to_vec())
            .or_else(|e| e.distill_partial_result(|_| {}));
        parsed
            .ok()
            .and_then(|exif| {
                exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                    .and_then(|field| field.value.get_uint(0))
            })
            .and_then(|v| u8::try_from(v).ok())
            .filter(|v| (1..=8).contains(v))
            .map_or(Orientation::NORMAL, Orientation)
    }

    /// The smallest EXIF block (a big-endian TIFF header and one IFD entry) that carries this
    /// orientation, starting at the TIFF header.
    pub fn to_exif(self) -> [u8; 26] {
        let mut tiff = [0u8; 26];
        tiff[..8].copy_from_slice(b"MM\0\x2a\0\0\0\x08");
        tiff[8..10].copy_from_slice(&1u16.to_be_bytes()); // one entry
        tiff[10..12].copy_from_slice(&0x0112u16.to_be_bytes()); // Orientation
        tiff[12..14].copy_from_slice(&3u16.to_be_bytes()); // SHORT
        tiff[14..18].copy_from_slice(&1u32.to_be_bytes()); // count
        tiff[18..20].copy_from_slice(&u16::from(self.value()).to_be_bytes());
        // bytes 20..22 pad the value field; 22..26 is the next-IFD offset, 0.
        tiff
    }

    /// Applies the orientation to a row-major image of `channels` bytes per pixel, returning the
    /// pixels as displayed and their width and height (the same buffer when nothing moves).
    pub fn apply(
        self,
        pixels: Vec<u8>,
        width: usize,
        height: usize,
        channels: usize,
    ) -> (Vec<u8>, usize, usize) {
        let value = self.value();
        if value == 1 {
            return (pixels, width, height);
        }
        let (out_w, out_h) = if self.swaps_dimensions() {
            (height, width)
        } else {
            (width, height)
        };
        let mut out = vec![0u8; pixels.len()];
        for oy in 0..out_h {
            for ox in 0..out_w {
                // The stored pixel that displays at (ox, oy).
                let (sx, sy) = match value {
                    2 => (width - 1 - ox, oy),
                    3 => (width - 1 - ox, height - 1 - oy),
                    4 => (ox, height - 1 - oy),
                    5 => (oy, ox),
                    6 => (oy, height - 1 - ox),
                    7 => (width - 1 - oy, height - 1 - ox),
                    _ => (width - 1 - oy, ox), // 8
                };
                let (src, dst) = ((sy * width + sx) * channels, (oy * out_w + ox) * channels);
                out[dst..dst + channels].copy_from_slice(&pixels[src..src + channels]);
            }
        }
        (out, out_w, out_h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_exif_reads_back() {
        for v in 1..=8 {
            assert_eq!(Orientation::from_exif(&Orientation(v).to_exif()).value(), v);
        }
    }

    #[test]
    fn broken_exif_reads_as_normal() {
        assert_eq!(Orientation::from_exif(b""), Orientation::NORMAL);
        assert_eq!(
            Orientation::from_exif(b"MM\0\x2a\0\0\xff\xff"),
            Orientation::NORMAL
        );
        let mut bad = Orientation(6).to_exif();
        bad[19] = 9; // out of range
        assert_eq!(Orientation::from_exif(&bad), Orientation::NORMAL);
    }

    #[test]
    fn apply_matches_the_exif_definitions() {
        // 3x2 stored image:  a b c / d e f
        let img = b"abcdef";
        let cases: [(u8, &[u8], usize); 8] = [
            (1, b"abcdef", 3),
            (2, b"cbafed", 3),
            (3, b"fedcba", 3),
            (4, b"defabc", 3),
            (5, b"adbecf", 2), // transpose
            (6, b"daebfc", 2), // rotate 90 clockwise
            (7, b"fcebda", 2), // transverse
            (8, b"cfbead", 2), // rotate 90 counter-clockwise
        ];
        for (v, want, w) in cases {
            let (got, gw, _) = Orientation(v).apply(img.to_vec(), 3, 2, 1);
            assert_eq!((got.as_slice(), gw), (want, w), "orientation {v}");
        }
    }
}
