//! Every limit refuses what is over it, from the header, before a pixel buffer exists.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cloudimg_engine::{Error, LimitKind, Limits, Options, convert, probe};
use support::fixtures::{self, JpegSpec};

/// Records the largest single allocation made on the current thread, so a test can show that
/// refusing an input never allocated anything of the input's declared size.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the bookkeeping touches only a
// const-initialised thread-local cell, which never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(layout.size())));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest allocation it made on this thread.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// Overwrites the dimensions in a JPEG's SOF0 header.
fn declare_jpeg_size(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0] || w == [0xFF, 0xC2])
        .expect("SOF");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// Overwrites the dimensions in a PNG's IHDR.
fn declare_png_size(mut png: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    png
}

fn over(result: Result<impl std::fmt::Debug, Error>) -> (LimitKind, u64, u64) {
    match result {
        Err(Error::OverLimit { limit, found, max }) => (limit, found, max),
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn a_jpeg_bomb_is_refused_from_its_header_without_allocating_pixels() {
    // 64,000 x 64,000 declared in a few kilobytes: 4 gigapixels.
    let bomb = declare_jpeg_size(fixtures::jpeg(JpegSpec::default()), 64_000, 64_000);
    let (result, largest) = largest_allocation(|| convert(&bomb, &Options::default()));
    assert_eq!(
        over(result),
        (LimitKind::Pixels, 4_096_000_000, 100_000_000)
    );
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before refusing"
    );
    assert_eq!(over(probe(&bomb, &Limits::default())).0, LimitKind::Pixels);
}

#[test]
fn a_png_bomb_is_refused_from_its_header_without_allocating_pixels() {
    let gray = vec![7u8; 16 * 16];
    let small = fixtures::png(
        16,
        16,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &gray,
    );
    let bomb = declare_png_size(small.clone(), 50_000, 50_000);
    let (result, largest) = largest_allocation(|| convert(&bomb, &Options::default()));
    assert_eq!(over(result).0, LimitKind::Pixels);
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before refusing"
    );
    let too_wide = declare_png_size(small, 70_000, 1);
    assert_eq!(
        over(convert(&too_wide, &Options::default())),
        (LimitKind::Width, 70_000, 65_535)
    );
}

/// The corpus's 613-byte bomb (49157 x 27397 declared) is also malformed before its frame
/// header (stray bytes after SOI); it is refused either way, without a pixel buffer.
#[test]
fn the_corpus_bomb_is_refused_from_its_header() {
    let Some(root) = support::corpus() else {
        return;
    };
    let bomb = std::fs::read(root.join("bad/jpeg/bomb/bomb_49157x27397_613B.jpg")).expect("read");
    let (result, largest) = largest_allocation(|| convert(&bomb, &Options::default()));
    let error = result.expect_err("refused");
    assert!(
        largest < 64 << 10,
        "allocated {largest} bytes before refusing: {error}"
    );
}

#[test]
fn each_limit_is_configurable_and_enforced() {
    let jpeg = fixtures::jpeg(JpegSpec {
        width: 64,
        height: 48,
        ..JpegSpec::default()
    });
    let options = |limits| Options {
        limits,
        ..Options::default()
    };
    let defaults = Limits::default();
    assert!(convert(&jpeg, &options(defaults)).is_ok());

    let bytes = Limits {
        max_input_bytes: 100,
        ..defaults
    };
    assert_eq!(
        over(convert(&jpeg, &options(bytes))),
        (LimitKind::InputBytes, jpeg.len() as u64, 100)
    );

    let pixels = Limits {
        max_pixels: 64 * 48 - 1,
        ..defaults
    };
    assert_eq!(
        over(convert(&jpeg, &options(pixels))),
        (LimitKind::Pixels, 64 * 48, 64 * 48 - 1)
    );
    let exactly = Limits {
        max_pixels: 64 * 48,
        ..defaults
    };
    assert!(
        convert(&jpeg, &options(exactly)).is_ok(),
        "the limit itself is allowed"
    );

    let side = Limits {
        max_dimension: 63,
        ..defaults
    };
    assert_eq!(
        over(convert(&jpeg, &options(side))),
        (LimitKind::Width, 64, 63)
    );
    let side = Limits {
        max_dimension: 50,
        ..defaults
    };
    assert_eq!(
        over(probe(&declare_jpeg_size(jpeg, 40, 60), &side)),
        (LimitKind::Height, 60, 50)
    );
}

#[test]
fn limit_errors_say_what_was_found_and_what_is_allowed() {
    let jpeg = fixtures::jpeg(JpegSpec::default());
    let limits = Limits {
        max_pixels: 1000,
        ..Limits::default()
    };
    let message = probe(&jpeg, &limits).unwrap_err().to_string();
    assert_eq!(message, "pixel count is 76800, over the limit of 1000");
}
