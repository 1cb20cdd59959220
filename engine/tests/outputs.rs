//! What the outputs hold: orientation, PNG output, alpha, 16-bit samples.

mod support;

use cloudimg_engine::{ConversionPath, Options, Orientation, OutputFormat, PathChoice, convert};
use support::fixtures::{self, JpegSpec};
use support::{Gray, decode_output, psnr, reference_luma};

fn decode_png(data: &[u8]) -> (png::ColorType, u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(data));
    let mut reader = decoder.read_info().expect("png header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("png data");
    buf.truncate(info.buffer_size());
    (info.color_type, info.width, info.height, buf)
}

#[test]
fn every_orientation_displays_like_the_source_on_both_paths() {
    for (width, height) in [(320u16, 240u16), (333, 251)] {
        for value in 1..=8 {
            let source = fixtures::jpeg(JpegSpec {
                width,
                height,
                orientation: value,
                ..JpegSpec::default()
            });
            let reference = reference_luma(&source).expect("reference").displayed(value);
            for path in [PathChoice::Auto, PathChoice::Pixels] {
                let converted = convert(
                    &source,
                    &Options {
                        path,
                        ..Options::default()
                    },
                )
                .expect("converts");
                assert_eq!(converted.source.orientation, Orientation::new(value));
                let output = decode_output(&converted.data).expect("decodes");
                assert_eq!(
                    output.orientation,
                    converted.orientation.value(),
                    "the tag is as reported"
                );
                let shown = output.gray.displayed(output.orientation);
                assert_eq!(
                    (shown.width, shown.height),
                    (reference.width, reference.height),
                    "{value} {path:?}"
                );
                let db = psnr(&shown, &reference);
                // The picture has no symmetry: a wrong orientation fails this by a wide margin.
                assert!(
                    db > 30.0,
                    "orientation {value} {width}x{height} {path:?}: {db:.1} dB"
                );
                // Aligned images are turned upright; others keep the tag on the coefficient path.
                let aligned = width % 8 == 0 && height % 8 == 0;
                if converted.path == ConversionPath::Pixels || aligned {
                    assert_eq!(
                        converted.orientation,
                        Orientation::NORMAL,
                        "{value} {path:?} upright"
                    );
                }
            }
        }
    }
}

#[test]
fn png_output_keeps_alpha_and_turns_upright() {
    let (w, h) = (40u32, 30u32);
    // Smooth colour and alpha ramps: what JPEG keeps well, so the comparison is about alpha.
    let rgba: Vec<u8> = (0..h)
        .flat_map(|y| {
            (0..w).flat_map(move |x| [(x * 6) as u8, 100, (200 - y * 3) as u8, (y * 8) as u8])
        })
        .collect();
    let source = fixtures::png(w, h, png::ColorType::Rgba, png::BitDepth::Eight, &rgba);
    let options = Options {
        format: OutputFormat::Png,
        ..Options::default()
    };
    let converted = convert(&source, &options).expect("converts");
    let (color, ow, oh, samples) = decode_png(&converted.data);
    assert_eq!((color, ow, oh), (png::ColorType::GrayscaleAlpha, w, h));
    for (px, out) in rgba.chunks_exact(4).zip(samples.chunks_exact(2)) {
        assert_eq!(
            out,
            [support::luma(px[0], px[1], px[2]), px[3]],
            "luma and alpha kept exactly"
        );
    }
    // As JPEG, the same source is composited over white.
    let jpeg = convert(&source, &Options::default()).expect("converts");
    let gray = decode_output(&jpeg.data).expect("decodes").gray;
    let want = Gray {
        width: w as usize,
        height: h as usize,
        pixels: rgba
            .chunks_exact(4)
            .map(|p| support::over_white(support::luma(p[0], p[1], p[2]), p[3]))
            .collect(),
    };
    assert!(psnr(&gray, &want) > 35.0);

    let rotated = fixtures::jpeg(JpegSpec {
        width: 48,
        height: 32,
        orientation: 6,
        ..JpegSpec::default()
    });
    let converted = convert(&rotated, &options).expect("converts");
    let (color, ow, oh, samples) = decode_png(&converted.data);
    assert_eq!(
        (color, ow, oh),
        (png::ColorType::Grayscale, 32, 48),
        "PNG viewers ignore EXIF: rotated"
    );
    assert_eq!(converted.orientation, Orientation::NORMAL);
    // Turned the right way: its pixels are the source's turned a quarter clockwise (EXIF 6), not
    // counter-clockwise (8) nor transposed (5), which give the same size. (The picture has no
    // symmetry, so the wrong turns are far below the bound.)
    let stored = reference_luma(&rotated).expect("reference");
    let png = Gray {
        width: ow as usize,
        height: oh as usize,
        pixels: samples,
    };
    let db = |orientation: u8| psnr(&png, &stored.displayed(orientation));
    assert!(db(6) > 40.0, "turned as EXIF 6 says: {:.1} dB", db(6));
    for wrong in [5, 7, 8] {
        assert!(
            db(wrong) < 20.0,
            "as EXIF {wrong} would turn it: {:.1} dB",
            db(wrong)
        );
    }
}

#[test]
fn sixteen_bit_samples_are_scaled_not_clipped() {
    let values: [u16; 4] = [0, 257 * 100, 65535, 32768];
    let samples: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
    let source = fixtures::png(
        4,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &samples,
    );
    let converted = convert(
        &source,
        &Options {
            format: OutputFormat::Png,
            ..Options::default()
        },
    )
    .expect("converts");
    let (_, _, _, gray) = decode_png(&converted.data);
    assert_eq!(gray, [0, 100, 255, 128]);
}
