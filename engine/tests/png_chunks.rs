//! Compressed ancillary PNG chunks (iCCP, zTXt) are inflated only so far: a 1x1 image carrying
//! a zlib bomb there is refused with little memory, where zune-png alone inflated it to gigabytes.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cloudimg_engine::{Error, LimitKind, Limits, Options, OutputFormat, convert, probe};
use support::fixtures;

/// Counts this thread's live heap bytes and their peak (tests run on threads of their own).
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

fn grew(bytes: usize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + bytes);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

fn shrank(bytes: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(bytes)));
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches only
// const-initialised thread-local cells, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as both blocks alive at once, the worst a realloc can do.
        grew(new_size);
        shrank(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak of this thread's heap above where it started.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    (out, PEAK.with(Cell::get) - base)
}

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
fn zeros_zlib(matches: usize) -> Vec<u8> {
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

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// A 1x1 gray PNG with one more chunk right after IHDR.
fn png_with_chunk(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
    let png = fixtures::png(1, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[7]);
    let ihdr_end = 8 + 8 + 13 + 4;
    let mut chunk = (body.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(kind);
    chunk.extend_from_slice(body);
    chunk.extend(crc32(&chunk[4..]).to_be_bytes());
    [&png[..ihdr_end], &chunk, &png[ihdr_end..]].concat()
}

/// The body of a zTXt or iCCP chunk: a keyword, its NUL, method 0, then the zlib stream.
fn compressed_body(keyword: &str, zlib: &[u8]) -> Vec<u8> {
    [keyword.as_bytes(), &[0, 0], zlib].concat()
}

fn refused(result: Result<impl std::fmt::Debug, Error>) -> (u64, u64) {
    match result {
        Err(Error::OverLimit {
            limit: LimitKind::AncillaryChunk,
            found,
            max,
        }) => (found, max),
        other => panic!("expected the ancillary-chunk limit, got {other:?}"),
    }
}

const PEAK_MAX: usize = 64 << 20;

#[test]
fn a_two_gigabyte_ztxt_or_iccp_is_refused_in_little_memory() {
    // 8 million matches: 2 MB of zlib that inflates to 2.06 GB.
    let bomb = zeros_zlib(8_000_000);
    assert!(bomb.len() < 2_100_000, "{} bytes", bomb.len());
    for (kind, keyword) in [(b"zTXt", "Comment"), (b"iCCP", "icc")] {
        let png = png_with_chunk(kind, &compressed_body(keyword, &bomb));
        for format in [OutputFormat::Jpeg, OutputFormat::Png] {
            let options = Options {
                format,
                ..Options::default()
            };
            let (result, peak) = peak_during(|| convert(&png, &options));
            let (found, max) = refused(result);
            assert!(found > max && max == 1 << 20, "{found} over {max}");
            assert!(peak < PEAK_MAX, "{kind:?}: peak {peak} bytes");
            println!(
                "{}: refused by convert ({format:?}), peak {peak} bytes",
                String::from_utf8_lossy(kind)
            );
        }
        // The producer probes every upload: the same refusal, as cheaply.
        let (result, peak) = peak_during(|| probe(&png, &Limits::default()));
        refused(result);
        assert!(peak < PEAK_MAX, "probe: peak {peak} bytes");
    }
}

#[test]
fn chunks_that_add_up_past_the_total_are_refused() {
    // Five chunks of 900 KB each: every one under the bound, 4.5 MB together.
    let body = compressed_body("Comment", &zeros_zlib(3_500));
    let chunk = png_with_chunk(b"zTXt", &body);
    let one_chunk = chunk.len()
        - fixtures::png(1, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[7]).len();
    let mut png = chunk.clone();
    for _ in 0..4 {
        png.splice(33..33, chunk[33..33 + one_chunk].to_vec());
    }
    let (found, max) = refused(convert(&png, &Options::default()));
    assert_eq!(max, 4 << 20);
    assert!(found > max, "{found}");
}

#[test]
fn small_compressed_chunks_convert() {
    // 100 KB of text and a 100 KB "profile" (zune-png keeps what does not parse as ICC).
    let text = compressed_body("Comment", &zeros_zlib(400));
    let png = png_with_chunk(b"zTXt", &text);
    let converted = convert(&png, &Options::default()).expect("converts");
    assert_eq!((converted.width, converted.height), (1, 1));
    let icc = compressed_body("icc", &zeros_zlib(400));
    convert(&png_with_chunk(b"iCCP", &icc), &Options::default()).expect("converts");
}
