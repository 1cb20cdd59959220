//! The rules JPEG and PNG follow, held for every other format: a header bomb is refused from the
//! header before any pixel buffer exists, a truncated file is an error (never a half-gray image),
//! and the shells' early check (`probe`) takes every format by content.

mod support;

use cloudimg_engine::{
    ErrorKind, Format, LimitKind, Options, OutputFormat, estimate, probe, sniff,
};
use support::counting::{Counting, peak_during};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most refusing a bomb may allocate: the header's bookkeeping, nothing image-sized.
const REFUSAL_BYTES: u64 = 64 << 10;

#[test]
fn a_header_bomb_in_every_format_is_refused_before_allocating() {
    let bombs = [
        (
            "BMP 60000x60000",
            cloudimg_hostile::bmp_declaring(60_000, 60_000),
            Format::Bmp,
        ),
        (
            "GIF 65535x65535",
            cloudimg_hostile::gif_declaring(65_535, 65_535),
            Format::Gif,
        ),
        (
            "WebP 16384x16384",
            cloudimg_hostile::webp_declaring(16_384, 16_384),
            Format::WebP,
        ),
        (
            "AVIF 20000x20000",
            cloudimg_hostile::heif_declaring(b"avif", 20_000, 20_000),
            Format::Avif,
        ),
        (
            "HEIC 20000x20000",
            cloudimg_hostile::heif_declaring(b"heic", 20_000, 20_000),
            Format::Heic,
        ),
        (
            "ICO holding a PNG of 50000x50000",
            cloudimg_hostile::ico_declaring(50_000, 50_000),
            Format::Ico,
        ),
        (
            "TIFF 60000x60000",
            cloudimg_hostile::tiff_declaring(60_000, 60_000),
            Format::Tiff,
        ),
    ];
    for (name, data, format) in bombs {
        assert_eq!(sniff(&data).expect(name), format, "{name}");
        for (how, options) in [
            ("jpeg", Options::default()),
            (
                "png",
                Options {
                    format: OutputFormat::Png,
                    ..Options::default()
                },
            ),
        ] {
            let (result, peak) = peak_during(|| cloudimg_engine::convert(&data, &options));
            let err = result.expect_err(name);
            assert!(
                matches!(
                    err,
                    cloudimg_engine::Error::OverLimit {
                        limit: LimitKind::Pixels,
                        ..
                    }
                ),
                "{name} ({how}): {err}"
            );
            assert!(
                peak < REFUSAL_BYTES,
                "{name} ({how}): refusing allocated {peak} bytes"
            );
        }
        let (probed, peak) = peak_during(|| probe(&data, &Options::default().limits));
        assert_eq!(
            probed.expect_err(name).kind(),
            ErrorKind::OverLimit,
            "{name}"
        );
        assert!(
            peak < REFUSAL_BYTES,
            "{name}: probing allocated {peak} bytes"
        );
        let (estimated, peak) = peak_during(|| estimate(&data, &Options::default()));
        assert_eq!(
            estimated.expect_err(name).kind(),
            ErrorKind::OverLimit,
            "{name}"
        );
        assert!(
            peak < REFUSAL_BYTES,
            "{name}: estimating allocated {peak} bytes"
        );
    }
}

/// A strip's decompressed size is bounded by the strip itself: a Deflate stream that inflates to a
/// gigabyte inside a 1-megapixel TIFF costs no more than the image.
#[test]
fn a_tiff_deflate_bomb_inflates_no_further_than_its_strip() {
    let zeros = cloudimg_hostile::zeros_zlib(cloudimg_hostile::matches_for(1 << 30));
    let data = cloudimg_hostile::tiff_gray_strip(1000, 1000, 8, &zeros);
    let (result, peak) = peak_during(|| cloudimg_engine::convert(&data, &Options::default()));
    if let Err(e) = result {
        assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    }
    assert!(
        peak < 16 << 20,
        "a 1 MP TIFF with a 1 GiB Deflate strip allocated {peak} bytes"
    );
}

#[test]
fn a_bomb_under_the_limit_is_still_a_valid_header() {
    // The same headers at a size the limits allow are read (and then refused as truncated or
    // corrupt, not as over a limit): the bombs above are refused for their size alone.
    for (name, data) in [
        ("BMP", cloudimg_hostile::bmp_declaring(100, 100)),
        ("GIF", cloudimg_hostile::gif_declaring(100, 100)),
        ("WebP", cloudimg_hostile::webp_declaring(100, 100)),
        ("ICO", cloudimg_hostile::ico_declaring(100, 100)),
        ("TIFF", cloudimg_hostile::tiff_declaring(100, 100)),
        ("AVIF", cloudimg_hostile::heif_declaring(b"avif", 100, 100)),
        ("HEIC", cloudimg_hostile::heif_declaring(b"heic", 100, 100)),
    ] {
        let err = cloudimg_engine::convert(&data, &Options::default()).expect_err(name);
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name}: {err}");
    }
}

/// A file of every format, from the corpus, that must refuse every truncation of itself.
const WHOLE_FILES: &[&str] = &[
    "formats/made/bmp/rgb24.bmp",
    "formats/made/bmp/pal8_rle.bmp",
    "formats/made/bmp/pal4.bmp",
    "formats/made/gif/photo_palette.gif",
    "formats/made/gif/interlaced.gif",
    "formats/made/webp/lossy_q80.webp",
    "formats/made/webp/lossless.webp",
    "formats/made/webp/lossy_alpha.webp",
    "formats/made/webp/animated_2_frames.webp",
    "formats/imagers/ico/images/bmp-24bpp-mask.ico",
    "formats/imagers/ico/images/png-32bpp-alpha.ico",
    "formats/made/tiff/rgb_lzw.tif",
    "formats/made/tiff/rgb_packbits.tif",
    "formats/made/tiff/tiled_deflate.tif",
    "formats/made/tiff/bilevel_g4.tif",
    "formats/made/tiff/rgb_jpeg.tif",
    "formats/made/avif/yuv420_8bit.avif",
    "formats/made/avif/alpha.avif",
    "formats/made/heic/photo.heic",
    "formats/made/heic/alpha.heic",
    "formats/pillow_heif/heif_other/pug.heic",
];

#[test]
fn every_truncation_of_every_format_is_an_error() {
    let Some(root) = support::corpus() else {
        return;
    };
    let mut failures = Vec::new();
    for path in WHOLE_FILES {
        let data = std::fs::read(root.join(path)).expect("read a corpus file");
        let info = probe(&data, &Options::default().limits).expect(path);
        cloudimg_engine::convert(&data, &Options::default()).expect(path);
        for eighth in 1..8 {
            let cut = data.len() * eighth / 8;
            match cloudimg_engine::convert(&data[..cut], &Options::default()) {
                Ok(c) => failures.push(format!(
                    "{path} ({}) cut to {cut} of {} bytes converted to {}x{}",
                    info.format,
                    data.len(),
                    c.width,
                    c.height
                )),
                Err(e) if e.kind() != ErrorKind::Invalid => failures.push(format!(
                    "{path} cut to {cut} bytes: {e} (expected an invalid-input error)"
                )),
                Err(_) => {}
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
