//! Criterion benches per engine stage, on a real photo: the coefficient path whole and by stage,
//! the pixel path's decode and encode next to the crates they replaced (zune-jpeg's luma decode,
//! jpeg-encoder), and the luma kernel next to its scalar reference.
//!
//! `cargo bench -p cloudimg-benches --bench stages`. Photos come from `CLOUDIMG_CORPUS` (else
//! `../shared/corpus`); without the corpus, a generated picture stands in.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use cloudimg_engine::stages::{self, DecodedCoefficients};
use cloudimg_engine::{Options, convert};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn corpus_photo(relative: &str) -> Option<(String, Vec<u8>)> {
    let root = std::env::var_os("CLOUDIMG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus"));
    let data = std::fs::read(root.join(relative)).ok()?;
    Some((relative.to_string(), data))
}

/// A generated 4000 x 3000 colour JPEG at quality 95, where the corpus is absent.
fn generated_photo() -> (String, Vec<u8>) {
    let (w, h) = (4000usize, 3000usize);
    let rgb: Vec<u8> = (0..w * h)
        .flat_map(|i| {
            let (x, y) = (i % w, i / w);
            [
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) & 0xFF) as u8,
            ]
        })
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .expect("encodes");
    ("generated 4000x3000 q95".into(), out)
}

fn photos() -> Vec<(String, Vec<u8>)> {
    let real: Vec<_> = [
        "bench/nikon-d3100_14mp.jpg",
        "bench-progressive/nikon-d3100_14mp_progressive.jpg",
    ]
    .iter()
    .filter_map(|p| corpus_photo(p))
    .collect();
    if real.is_empty() {
        eprintln!("no corpus: benching a generated picture");
        return vec![generated_photo()];
    }
    real
}

fn pixels_of(data: &[u8]) -> u64 {
    let info = cloudimg_engine::probe(data, &Default::default()).expect("probe");
    u64::from(info.width) * u64::from(info.height)
}

fn coefficient_path(c: &mut Criterion) {
    for (name, data) in photos() {
        let mut group = c.benchmark_group(format!("coefficient path/{name}"));
        group.throughput(Throughput::Elements(pixels_of(&data)));
        group.bench_function("whole conversion q85", |b| {
            b.iter(|| convert(black_box(&data), &Options::default()).expect("converts"))
        });
        group.bench_function("entropy decode", |b| {
            b.iter(|| stages::entropy_decode(black_box(&data)).expect("decodes"))
        });
        let decoded = DecodedCoefficients::decode(&data).expect("decodes");
        group.bench_function("requantize + entropy encode q85", |b| {
            b.iter(|| decoded.encode(black_box(85)).expect("encodes"))
        });
        group.finish();
    }
}

fn pixel_path(c: &mut Criterion) {
    let (name, data) = photos().swap_remove(0);
    let (plane, width, height) = stages::decode_luma_plane(&data).expect("decodes");
    let mut group = c.benchmark_group(format!("pixel path/{name}"));
    group.throughput(Throughput::Elements((width * height) as u64));
    group.bench_function("decode to luma (ours)", |b| {
        b.iter(|| stages::decode_luma_plane(black_box(&data)).expect("decodes"))
    });
    group.bench_function("decode to luma (zune-jpeg 0.5)", |b| {
        use zune_core::{bytestream::ZCursor, colorspace::ColorSpace, options::DecoderOptions};
        b.iter(|| {
            let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::Luma);
            zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(black_box(&data[..])), options)
                .decode()
                .expect("decodes")
        })
    });
    group.bench_function("encode q85 (ours)", |b| {
        b.iter(|| stages::encode_luma_plane(black_box(&plane), width, height, 85).expect("encodes"))
    });
    group.bench_function("encode q85 (jpeg-encoder 0.7, simd)", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            jpeg_encoder::Encoder::new(&mut out, 85)
                .encode(
                    black_box(&plane),
                    width as u16,
                    height as u16,
                    jpeg_encoder::ColorType::Luma,
                )
                .expect("encodes");
            out
        })
    });
    group.finish();
}

fn luma_kernel(c: &mut Criterion) {
    let pixels = 12_000_000usize;
    let rgb: Vec<u8> = (0..pixels * 3)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut out = vec![0u8; pixels];
    let mut group = c.benchmark_group("luma kernel/12 MP RGB");
    group.throughput(Throughput::Elements(pixels as u64));
    group.bench_function(format!("simd ({})", cloudimg_engine::simd_path()), |b| {
        b.iter(|| stages::rgb_to_luma(black_box(&rgb), &mut out))
    });
    group.bench_function("scalar reference", |b| {
        b.iter(|| stages::rgb_to_luma_scalar(black_box(&rgb), &mut out))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = coefficient_path, pixel_path, luma_kernel
}
criterion_main!(benches);
