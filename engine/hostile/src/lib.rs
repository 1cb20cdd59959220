//! What an attacker uploads, made at test time (never committed files): small inputs that cost a
//! decoder gigabytes or minutes when nothing bounds it.
//!
//! * [`zeros_zlib`]: a zlib stream inflating about 1,000 to 1 (2 MB → 2 GB).
//! * [`png_with_chunk`], [`ztxt`], [`iccp`]: that stream in a PNG's ancillary chunks, which a
//!   decoder inflates while reading the header of a 1x1 image.
//! * [`repeat_last_scan`]: a progressive JPEG repeating one scan thousands of times, each walking
//!   the whole image.
//! * [`png_declaring`], [`jpeg_declaring`], [`bmp_declaring`], [`gif_declaring`],
//!   [`webp_declaring`], [`ico_declaring`], [`tiff_declaring`]: headers that declare far more
//!   pixels than the file holds.
//! * [`tiff_gray_strip`], [`tiff_strip`]: a TIFF strip of any compression, e.g. [`zeros_zlib`] as
//!   a Deflate strip, or [`stored_zlib`] of chosen samples.
#![forbid(unsafe_code)]

/// Deflate's bits, least significant first.
#[derive(Default)]
struct Bits {
    out: Vec<u8>,
    acc: u64,
    count: u32,
}

impl Bits {
    /// `len` bits of `value`, least significant first (deflate's extra bits and headers).
    fn put(&mut self, value: u32, len: u32) {
        self.acc |= u64::from(value) << self.count;
        self.count += len;
        while self.count >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.count -= 8;
        }
    }

    /// A Huffman code, most significant bit first.
    fn code(&mut self, code: u32, len: u32) {
        for i in (0..len).rev() {
            self.put((code >> i) & 1, 1);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        if self.count > 0 {
            self.out.push(self.acc as u8);
        }
        self.out
    }
}

/// A zlib stream of `1 + 258 * matches` zero bytes in one dynamic-Huffman block whose every
/// match (length 258, distance 1) takes two bits: about 1,000 to 1.
///
/// Literal/length code: 285 (length 258) is `0`, literal 0 is `10`, end of block is `11`;
/// distance code: 0 (distance 1) is `0`, 1 is `1`. Their lengths are sent with the code-length
/// code 18 (a run of zeros) `0`, length 1 `10`, length 2 `11`.
pub fn zeros_zlib(matches: usize) -> Vec<u8> {
    let mut bits = Bits::default();
    bits.put(1, 1); // final block
    bits.put(2, 2); // dynamic Huffman
    bits.put(286 - 257, 5);
    bits.put(2 - 1, 5);
    bits.put(18 - 4, 4);
    // Code-length code lengths in the order 16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3,
    // 13, 2, 14, 1: 18 gets 1, 2 and 1 get 2.
    for len in [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 2] {
        bits.put(len, 3);
    }
    let length = |bits: &mut Bits, len: u32| bits.code(if len == 1 { 0b10 } else { 0b11 }, 2);
    let zeros = |bits: &mut Bits, run: u32| {
        bits.code(0, 1);
        bits.put(run - 11, 7);
    };
    length(&mut bits, 2); // literal 0
    zeros(&mut bits, 138); // literals 1..=138
    zeros(&mut bits, 117); // literals 139..=255
    length(&mut bits, 2); // end of block
    zeros(&mut bits, 28); // lengths 257..=284
    length(&mut bits, 1); // 285
    length(&mut bits, 1); // distance 0
    length(&mut bits, 1); // distance 1
    bits.code(0b10, 2); // one literal zero
    for _ in 0..matches / 16 {
        bits.put(0, 32); // sixteen matches
    }
    for _ in 0..matches % 16 {
        bits.put(0, 2);
    }
    bits.code(0b11, 2); // end of block
    let mut zlib = vec![0x78, 0x01];
    zlib.extend(bits.finish());
    let total = 1 + 258 * matches as u64;
    let adler = ((total % 65521) << 16) | 1;
    zlib.extend((adler as u32).to_be_bytes());
    zlib
}

/// The matches for [`zeros_zlib`] to inflate to about `bytes`.
pub fn matches_for(bytes: u64) -> usize {
    (bytes / 258) as usize
}

/// PNG's CRC-32 (ISO 3309) of `bytes`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// One PNG chunk: length, type, body, CRC.
pub fn png_chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut chunk = (body.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(body);
    chunk.extend(crc32(&chunk[4..]).to_be_bytes());
    chunk
}

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];

fn ihdr(width: u32, height: u32, bit_depth: u8, color_type: u8) -> Vec<u8> {
    let mut body = width.to_be_bytes().to_vec();
    body.extend(height.to_be_bytes());
    body.extend([bit_depth, color_type, 0, 0, 0]);
    png_chunk(b"IHDR", &body)
}

/// A valid 1x1 8-bit gray PNG whose one pixel is `value`, built by hand (a stored deflate block).
pub fn gray_pixel_png(value: u8) -> Vec<u8> {
    let raw = [0u8, value]; // filter type 0, the pixel
    let mut zlib = vec![0x78, 0x01, 0x01, 0x02, 0x00, 0xFD, 0xFF];
    zlib.extend(raw);
    let (a, b) = raw.iter().fold((1u32, 0u32), |(a, b), &x| {
        let a = (a + u32::from(x)) % 65521;
        (a, (b + a) % 65521)
    });
    zlib.extend(((b << 16) | a).to_be_bytes());
    [
        &PNG_SIGNATURE[..],
        &ihdr(1, 1, 8, 0),
        &png_chunk(b"IDAT", &zlib),
        &png_chunk(b"IEND", &[]),
    ]
    .concat()
}

/// `png` with one more chunk right after its IHDR.
pub fn png_with_chunk(png: &[u8], kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let ihdr_end = 8 + 8 + 13 + 4;
    [&png[..ihdr_end], &png_chunk(kind, body), &png[ihdr_end..]].concat()
}

/// The body of a zTXt or iCCP chunk: a keyword, its NUL, method 0, then the zlib stream.
pub fn compressed_body(keyword: &str, zlib: &[u8]) -> Vec<u8> {
    [keyword.as_bytes(), &[0, 0], zlib].concat()
}

/// A 1x1 PNG with a zTXt comment inflating to about `inflated` bytes.
pub fn ztxt(inflated: u64) -> Vec<u8> {
    let body = compressed_body("Comment", &zeros_zlib(matches_for(inflated)));
    png_with_chunk(&gray_pixel_png(7), b"zTXt", &body)
}

/// A 1x1 PNG with an ICC profile inflating to about `inflated` bytes.
pub fn iccp(inflated: u64) -> Vec<u8> {
    let body = compressed_body("icc", &zeros_zlib(matches_for(inflated)));
    png_with_chunk(&gray_pixel_png(7), b"iCCP", &body)
}

/// A PNG header declaring `width` x `height` RGBA pixels of 16 bits, with one tiny IDAT: a
/// decoder that trusts the header allocates `8 * width * height` bytes.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    [
        &PNG_SIGNATURE[..],
        &ihdr(width, height, 16, 6),
        &png_chunk(b"IDAT", &[0x78, 0x01, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        &png_chunk(b"IEND", &[]),
    ]
    .concat()
}

/// A 24-bit BMP whose header declares `width` x `height` pixels (bottom-up) and holds 64 bytes of
/// pixel data: a decoder that trusts the header allocates `3 * width * height` bytes.
pub fn bmp_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut bmp = Vec::new();
    bmp.extend_from_slice(b"BM");
    bmp.extend_from_slice(&(54u32 + 64).to_le_bytes()); // file size
    bmp.extend_from_slice(&[0; 4]);
    bmp.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    bmp.extend_from_slice(&40u32.to_le_bytes()); // BITMAPINFOHEADER
    bmp.extend_from_slice(&width.to_le_bytes());
    bmp.extend_from_slice(&height.to_le_bytes());
    bmp.extend_from_slice(&1u16.to_le_bytes()); // planes
    bmp.extend_from_slice(&24u16.to_le_bytes()); // bits
    bmp.extend_from_slice(&[0; 24]); // no compression, sizes, resolution, colours
    bmp.extend_from_slice(&[0x80; 64]);
    bmp
}

/// A GIF whose logical screen and first frame are `width` x `height` (up to 65,535 each), with
/// a few bytes of LZW data: a decoder that trusts the header allocates the screen.
pub fn gif_declaring(width: u16, height: u16) -> Vec<u8> {
    let mut gif = Vec::new();
    gif.extend_from_slice(b"GIF89a");
    gif.extend_from_slice(&width.to_le_bytes());
    gif.extend_from_slice(&height.to_le_bytes());
    gif.extend_from_slice(&[0x80, 0, 0]); // a global palette of two colours
    gif.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    gif.push(0x2C); // image descriptor
    gif.extend_from_slice(&[0, 0, 0, 0]);
    gif.extend_from_slice(&width.to_le_bytes());
    gif.extend_from_slice(&height.to_le_bytes());
    gif.push(0);
    gif.extend_from_slice(&[2, 2, 0x4C, 0x01, 0, 0x3B]); // LZW: min code 2, one tiny block
    gif
}

/// A lossless WebP whose VP8L header declares `width` x `height` (1 to 16,384 each), with no
/// image data after it: a decoder that trusts the header allocates `4 * width * height` bytes.
pub fn webp_declaring(width: u32, height: u32) -> Vec<u8> {
    let bits = (width - 1) | ((height - 1) << 14);
    let mut vp8l = vec![0x2F];
    vp8l.extend_from_slice(&bits.to_le_bytes());
    vp8l.extend_from_slice(&[0; 11]);
    let mut webp = Vec::new();
    webp.extend_from_slice(b"RIFF");
    webp.extend_from_slice(&(4 + 8 + vp8l.len() as u32).to_le_bytes());
    webp.extend_from_slice(b"WEBPVP8L");
    webp.extend_from_slice(&(vp8l.len() as u32).to_le_bytes());
    webp.extend_from_slice(&vp8l);
    webp
}

/// An icon whose one entry is [`png_declaring`]`(width, height)`: the bomb inside a container.
pub fn ico_declaring(width: u32, height: u32) -> Vec<u8> {
    let png = png_declaring(width, height);
    let mut ico = vec![0, 0, 1, 0, 1, 0];
    ico.extend_from_slice(&[0, 0, 0, 0, 1, 0, 32, 0]); // 256x256, 32 bits
    ico.extend_from_slice(&(png.len() as u32).to_le_bytes());
    ico.extend_from_slice(&22u32.to_le_bytes()); // right after the directory
    ico.extend_from_slice(&png);
    ico
}

/// A TIFF (classic, little-endian) declaring `width` x `height` 8-bit gray pixels in one
/// uncompressed strip, holding 64 bytes of it: a decoder that trusts the header allocates
/// `width * height` bytes.
pub fn tiff_declaring(width: u32, height: u32) -> Vec<u8> {
    tiff_gray_strip(width, height, 1, &[0x80; 64])
}

/// A TIFF (classic, little-endian) of `width` x `height` 8-bit gray pixels (BlackIsZero) in one
/// strip of `compression` (1 none, 5 LZW, 8 Deflate, 32773 PackBits) holding `strip`.
pub fn tiff_gray_strip(width: u32, height: u32, compression: u16, strip: &[u8]) -> Vec<u8> {
    tiff_strip(width, height, compression, 1, 1, &[], strip)
}

/// A TIFF (classic, little-endian) of `width` x `height` pixels of `samples` 8-bit samples in
/// one strip of `compression` holding `strip`, with photometric interpretation `photometric` and
/// `more` entries: (tag, type, count, value), the value inline (at most four bytes).
pub fn tiff_strip(
    width: u32,
    height: u32,
    compression: u16,
    photometric: u16,
    samples: u16,
    more: &[(u16, u16, u32, u32)],
    strip: &[u8],
) -> Vec<u8> {
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    let count = 9 + more.len();
    let strip_at = (8 + 2 + 12 * count + 4) as u32;
    let mut entries = vec![
        (256, LONG, 1, width),
        (257, LONG, 1, height),
        // One value for every sample, as libtiff and Pillow accept.
        (258, SHORT, 1, 8),
        (259, SHORT, 1, u32::from(compression)),
        (262, SHORT, 1, u32::from(photometric)),
        (273, LONG, 1, strip_at),
        (277, SHORT, 1, u32::from(samples)),
        (278, LONG, 1, height),
        (279, LONG, 1, strip.len() as u32),
    ];
    entries.extend_from_slice(more);
    entries.sort_by_key(|e| e.0);
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes());
    tiff.extend_from_slice(&(count as u16).to_le_bytes());
    for (tag, kind, n, value) in entries {
        tiff.extend_from_slice(&tag.to_le_bytes());
        tiff.extend_from_slice(&kind.to_le_bytes());
        tiff.extend_from_slice(&n.to_le_bytes());
        tiff.extend_from_slice(&value.to_le_bytes());
    }
    tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    tiff.extend_from_slice(strip);
    tiff
}

/// `bytes` as a zlib stream of stored (uncompressed) Deflate blocks: what a TIFF Deflate strip
/// holds, without an encoder.
pub fn stored_zlib(bytes: &[u8]) -> Vec<u8> {
    let mut zlib = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = bytes.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        zlib.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        zlib.extend_from_slice(&len.to_le_bytes());
        zlib.extend_from_slice(&(!len).to_le_bytes());
        zlib.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in bytes {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    zlib.extend_from_slice(&((b << 16) | a).to_be_bytes());
    zlib
}

fn heif_box(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(body);
    out
}

fn heif_full_box(kind: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
    let mut full = vec![version, 0, 0, 0];
    full.extend_from_slice(body);
    heif_box(kind, &full)
}

/// A HEIF file whose one item (`av01` for brand `avif`, else `hvc1`) declares `width` x `height`
/// in its `ispe`, with 16 zero bytes of coded data: a reader that trusts the container allocates
/// for the declared size before the codec finds the data useless.
pub fn heif_declaring(brand: &[u8; 4], width: u32, height: u32) -> Vec<u8> {
    let (item_type, config) = if brand == b"avif" {
        (b"av01", heif_box(b"av1C", &[0x81, 0, 0x0C, 0]))
    } else {
        // hvcC: 22 bytes of profile and format (4-byte NAL lengths), no parameter sets.
        let mut hvcc = vec![1u8; 22];
        hvcc[21] = 0xF3;
        hvcc.push(0);
        (b"hvc1", heif_box(b"hvcC", &hvcc))
    };
    let mut ispe = Vec::new();
    ispe.extend_from_slice(&width.to_be_bytes());
    ispe.extend_from_slice(&height.to_be_bytes());
    let ipco = heif_box(
        b"ipco",
        &[heif_full_box(b"ispe", 0, &ispe), config].concat(),
    );
    // Item 1: properties 1 and 2.
    let ipma = heif_full_box(b"ipma", 0, &[0, 0, 0, 1, 0, 1, 2, 0x81, 0x82]);
    let mut infe = vec![0, 1, 0, 0];
    infe.extend_from_slice(item_type);
    let iinf = heif_full_box(
        b"iinf",
        0,
        &[&[0, 1][..], &heif_full_box(b"infe", 2, &infe)].concat(),
    );
    let meta_without_iloc = [
        heif_full_box(b"hdlr", 0, b"\0\0\0\0pict\0\0\0\0\0\0\0\0\0\0\0\0\0"),
        heif_full_box(b"pitm", 0, &[0, 1]),
        iinf,
        heif_box(b"iprp", &[ipco, ipma].concat()),
    ]
    .concat();
    let ftyp = heif_box(
        b"ftyp",
        &[&brand[..], &[0; 4], b"mif1", &brand[..]].concat(),
    );
    // iloc v0, 4-byte offsets and lengths, one item of one extent: 16 bytes of mdat.
    let iloc_len = 8 + 4 + 2 + 2 + 2 + 2 + 2 + 8;
    let meta_len = 8 + 4 + meta_without_iloc.len() + iloc_len;
    let data_at = (ftyp.len() + meta_len + 8) as u32;
    let mut iloc = vec![0x44, 0x00, 0, 1, 0, 1, 0, 0, 0, 1];
    iloc.extend_from_slice(&data_at.to_be_bytes());
    iloc.extend_from_slice(&16u32.to_be_bytes());
    let meta = heif_full_box(
        b"meta",
        0,
        &[meta_without_iloc, heif_full_box(b"iloc", 0, &iloc)].concat(),
    );
    [ftyp, meta, heif_box(b"mdat", &[0; 16])].concat()
}

/// Where the segment whose marker starts at `at` ends: after its payload, and for a scan (SOS)
/// after its entropy-coded data too (the next marker other than a restart or a stuffed byte).
fn segment_end(jpeg: &[u8], at: usize) -> usize {
    let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
    let mut end = at + 2 + len;
    if jpeg[at + 1] == 0xDA {
        while jpeg[end] != 0xFF || matches!(jpeg[end + 1], 0x00 | 0xD0..=0xD7) {
            end += 1;
        }
    }
    end
}

/// `jpeg` with its last scan (header and data) repeated `times` more times before EOI. The
/// repeated scan uses the tables in force at the end, so every copy decodes as the first did.
pub fn repeat_last_scan(jpeg: &[u8], times: usize) -> Vec<u8> {
    let mut at = 2;
    let mut last_scan = None;
    while jpeg[at + 1] != 0xD9 {
        let end = segment_end(jpeg, at);
        if jpeg[at + 1] == 0xDA {
            last_scan = Some(at..end);
        }
        at = end;
    }
    let scan = last_scan.expect("a scan");
    let mut out = jpeg[..at].to_vec();
    for _ in 0..times {
        out.extend_from_slice(&jpeg[scan.clone()]);
    }
    out.extend_from_slice(&jpeg[at..]);
    out
}

/// How many scans (SOS segments) `jpeg` has.
pub fn count_scans(jpeg: &[u8]) -> usize {
    let mut at = 2;
    let mut scans = 0;
    while jpeg[at + 1] != 0xD9 {
        scans += usize::from(jpeg[at + 1] == 0xDA);
        at = segment_end(jpeg, at);
    }
    scans
}

/// `jpeg` with its frame header (SOFn) declaring `width` x `height`, cut after the first scan's
/// header: a decoder that trusts the header allocates for the declared size before any data.
pub fn jpeg_declaring(jpeg: &[u8], width: u16, height: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let mut at = 2;
    loop {
        let marker = out[at + 1];
        if matches!(marker, 0xC0..=0xC2) {
            out[at + 5..at + 7].copy_from_slice(&height.to_be_bytes());
            out[at + 7..at + 9].copy_from_slice(&width.to_be_bytes());
        }
        if marker == 0xDA {
            let len = usize::from(u16::from_be_bytes([out[at + 2], out[at + 3]]));
            out.truncate(at + 2 + len + 64);
            return out;
        }
        at += 2 + usize::from(u16::from_be_bytes([out[at + 2], out[at + 3]]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_zlib_bomb_inflates_a_thousand_to_one() {
        // Read back by an independent inflater (miniz_oxide, which also checks the Adler-32):
        // exactly the zeros it promises, about 1,000 times its size.
        let matches = 40_000;
        let zlib = zeros_zlib(matches);
        let inflated =
            miniz_oxide::inflate::decompress_to_vec_zlib(&zlib).expect("a valid zlib stream");
        assert_eq!(inflated.len(), 1 + 258 * matches);
        assert!(inflated.iter().all(|&b| b == 0), "only zeros");
        assert!(
            inflated.len() >= 1000 * zlib.len(),
            "{} bytes from {}",
            inflated.len(),
            zlib.len()
        );
        // The gigabyte the tests send stays near a megabyte.
        assert!(zeros_zlib(matches_for(1 << 30)).len() < 1_100_000);
    }

    #[test]
    fn crc_matches_the_png_specification_example() {
        // The CRC of an IEND chunk's type is the constant every PNG ends with.
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
    }
}
