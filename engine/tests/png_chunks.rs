//! Compressed ancillary PNG chunks (iCCP, zTXt) are inflated only so far: a 1x1 image carrying
//! a zlib bomb there is refused with little memory, where zune-png alone inflated it to gigabytes.

mod support;

use cloudimg_engine::{Error, LimitKind, Limits, Options, OutputFormat, convert, probe};
use cloudimg_hostile::{compressed_body, gray_pixel_png, png_with_chunk, zeros_zlib};
use support::counting::{Counting, peak_during};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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

const PEAK_MAX: u64 = 64 << 20;

#[test]
fn a_two_gigabyte_ztxt_or_iccp_is_refused_in_little_memory() {
    // 8 million matches: 2 MB of zlib that inflates to 2.06 GB.
    let bomb = zeros_zlib(8_000_000);
    assert!(bomb.len() < 2_100_000, "{} bytes", bomb.len());
    for (kind, keyword) in [(b"zTXt", "Comment"), (b"iCCP", "icc")] {
        let png = png_with_chunk(&gray_pixel_png(7), kind, &compressed_body(keyword, &bomb));
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
    let chunk = png_with_chunk(&gray_pixel_png(7), b"zTXt", &body);
    let one_chunk = chunk.len() - gray_pixel_png(7).len();
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
    let png = png_with_chunk(&gray_pixel_png(7), b"zTXt", &text);
    let converted = convert(&png, &Options::default()).expect("converts");
    assert_eq!((converted.width, converted.height), (1, 1));
    let icc = compressed_body("icc", &zeros_zlib(400));
    convert(
        &png_with_chunk(&gray_pixel_png(7), b"iCCP", &icc),
        &Options::default(),
    )
    .expect("converts");
}
