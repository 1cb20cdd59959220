//! End to end on real servers: the real `cloudimg-producer` and `cloudimg-worker` binaries against
//! RabbitMQ and the S3 endpoint `scripts/test.sh` starts (moto), fed by the real `cloudimg send`.
//! Every object that lands in the bucket is checked, and judged against its own source (luma PSNR
//! from independent decoders, as displayed), so a swapped, blank or mis-turned result fails.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use cloudimg_test_support::*;

/// The real producer (staging uploads over `stage_over` bytes) and one worker, on `queue` and
/// `bucket`; returns them and the producer's address.
fn start_pipeline(
    queue: &str,
    bucket: &Bucket,
    endpoint: &str,
    stage_over: u64,
) -> (Shells, Service, Service, String) {
    let shells = Shells::on_s3(queue, bucket, endpoint);
    let (producer, address) =
        shells.producer(&[("CLOUDIMG_STAGE_OVER_BYTES", &stage_over.to_string())]);
    let worker = shells.worker(&[]);
    (shells, producer, worker, address)
}

/// Runs `cloudimg send --json --wait` over `paths`.
async fn send_and_wait(address: &str, paths: &[PathBuf]) -> Sent {
    let mut args: Vec<OsString> = ["--wait", "--timeout", "900", "-c", "8"]
        .map(OsString::from)
        .into();
    args.extend(paths.iter().map(|p| p.clone().into_os_string()));
    send_async(address, args).await
}

/// What a result object must be.
struct Expected {
    displayed: (u32, u32),
    source_name: String,
    /// The file sent, its EXIF orientation, and the PSNR its result must reach against it; `None`
    /// for formats the reference decoders do not read (WebP, AVIF, HEIC, GIF, BMP, ICO, TIFF: the
    /// engine's formats test holds those against Pillow), whose result must equal the engine's own
    /// conversion.
    source: PathBuf,
    orientation: u32,
    min_db: Option<f64>,
}

/// Checks one result: a grayscale JPEG of the right displayed size, with the contract's
/// content type and metadata, whose pixels are its own source's luma (the conformance bound).
/// Returns a description of every mismatch.
async fn check_result(
    bucket: &Bucket,
    record: &serde_json::Value,
    expected: &Expected,
) -> Vec<String> {
    let mut problems = Vec::new();
    let file = record["file"].as_str().unwrap_or("?");
    let key = record["key"].as_str().unwrap_or_default();
    let job_id = record["job_id"].as_str().unwrap_or_default();
    if key != format!("gray/{job_id}.jpg") {
        problems.push(format!("{file}: key {key:?} is not gray/<job_id>.jpg"));
    }
    let object = match bucket
        .client
        .get_object()
        .bucket(&bucket.name)
        .key(key)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => return vec![format!("{file}: no object at {key}: {e}")],
    };
    if object.content_type() != Some("image/jpeg") {
        problems.push(format!("{file}: content type {:?}", object.content_type()));
    }
    let meta: BTreeMap<String, String> = object
        .metadata()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    if meta.get("job-id").map(String::as_str) != Some(job_id) {
        problems.push(format!("{file}: metadata job-id {:?}", meta.get("job-id")));
    }
    let source_name =
        cloudimg_runtime::jobs::percent_decode(meta.get("source-name").map_or("", String::as_str));
    if source_name != expected.source_name {
        problems.push(format!(
            "{file}: metadata source-name {source_name:?}, expected {:?}",
            expected.source_name
        ));
    }
    let data = object.body.collect().await.unwrap().into_bytes();
    let source = std::fs::read(&expected.source).unwrap();
    match expected.min_db {
        Some(min_db) => {
            if let Err(e) = judge(&source, expected.orientation, &data, min_db) {
                problems.push(format!("{file}: {e}"));
            }
        }
        // The reference decoders do not read this format (the engine's formats test holds it
        // against Pillow): the result must be, byte for byte, what the engine makes of this very
        // source at the same (default) options, so a swapped or blank result still fails.
        None => match cloudimg_engine::convert(&source, &cloudimg_engine::Options::default()) {
            Ok(local) if local.data == data[..] => {}
            Ok(local) => problems.push(format!(
                "{file}: {} bytes, not the engine's own conversion of its source ({} bytes)",
                data.len(),
                local.data.len()
            )),
            Err(e) => problems.push(format!("{file}: the engine refuses its source here: {e}")),
        },
    }
    let image = match ResultImage::decode(&data) {
        Ok(image) => image,
        Err(e) => {
            problems.push(format!("{file}: result does not decode: {e}"));
            return problems;
        }
    };
    if !image.is_grayscale() {
        problems.push(format!(
            "{file}: result is {:?}, not grayscale",
            image.format
        ));
    }
    let displayed = image.displayed;
    if displayed != expected.displayed {
        problems.push(format!(
            "{file}: displays at {displayed:?} (stored {:?}, orientation {}), expected {:?}",
            image.stored, image.orientation, expected.displayed
        ));
    }
    let meta_size = (
        meta.get("width").and_then(|v| v.parse::<u32>().ok()),
        meta.get("height").and_then(|v| v.parse::<u32>().ok()),
    );
    if meta_size != (Some(displayed.0), Some(displayed.1)) {
        problems.push(format!("{file}: metadata width/height {meta_size:?}"));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photos_conformance_files_and_a_large_upload_all_land_as_grayscale_jpegs() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let Some(corpus) = corpus() else { return };
    let rows = manifest(&corpus);
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("e2e");
    let fixtures = TempDir::new("e2e");

    // What we send: the bench folder as a folder, every `ok` conformance file by name, a file of
    // each other format, and a JPEG over 4 MiB made here (staged: the producer stages above
    // 4 MiB in this test).
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut paths = vec![corpus.join("bench")];
    for row in &rows {
        let path = corpus.join(&row.path);
        let name = Path::new(&row.path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let Some(min_db) = row.min_db() else {
            continue;
        };
        let sent_by_name = row.path.starts_with("conformance/");
        if sent_by_name || row.path.starts_with("bench/") {
            if sent_by_name {
                paths.push(path.clone());
            }
            expected.insert(
                path.display().to_string(),
                Expected {
                    displayed: row.displayed(),
                    source_name: name,
                    source: path.clone(),
                    orientation: row.orientation,
                    min_db: Some(min_db),
                },
            );
        }
    }
    // One file of each format beyond JPEG and PNG, sent by name; their format is found from
    // their bytes by the producer's early check, its probe and the worker.
    for (path, displayed) in [
        (
            "formats/made/webp/lossy_exif_orientation6.webp",
            (1600, 1200),
        ),
        ("formats/made/webp/lossless_alpha.webp", (1200, 800)),
        ("formats/made/avif/yuv420_8bit.avif", (1200, 1600)),
        ("formats/made/heic/photo.heic", (1200, 1600)),
        ("formats/made/gif/photo_palette.gif", (800, 533)),
        ("formats/made/bmp/rgb24.bmp", (1200, 800)),
        ("formats/imagers/ico/images/bmp-24bpp-mask.ico", (32, 32)),
        ("formats/made/tiff/orientation6.tif", (800, 1200)),
    ] {
        let path = corpus.join(path);
        let source_name = path.file_name().unwrap().to_string_lossy().into_owned();
        paths.push(path.clone());
        expected.insert(
            path.display().to_string(),
            Expected {
                displayed,
                source_name,
                source: path.clone(),
                orientation: 1,
                min_db: None,
            },
        );
    }
    let large = fixtures.0.join("large.jpg");
    let large_jpeg = fixture_jpeg(2000, 1500, 7, 255, 97);
    assert!(
        large_jpeg.len() > 4 << 20,
        "fixture is only {} bytes",
        large_jpeg.len()
    );
    std::fs::write(&large, &large_jpeg).unwrap();
    paths.push(large.clone());
    expected.insert(
        large.display().to_string(),
        Expected {
            displayed: (2000, 1500),
            source_name: "large.jpg".into(),
            source: large.clone(),
            orientation: 1,
            min_db: Some(FIXTURE_MIN_DB),
        },
    );

    let (shells, mut producer, mut worker, address) =
        start_pipeline(&queue, &bucket, &endpoint, 4 << 20);
    let sent = send_and_wait(&address, &paths).await;
    let records = &sent.records;

    let mut problems = Vec::new();
    if sent.code != Some(0) {
        problems.push(format!(
            "cloudimg send exited {:?}: {}",
            sent.code, sent.stderr
        ));
    }
    let mut seen_files = HashSet::new();
    let mut keys = HashSet::new();
    for record in records {
        let file = record["file"].as_str().unwrap_or("?").to_owned();
        if record["status"] != "done" || !record["error"].is_null() {
            problems.push(format!("{file}: {record}"));
            continue;
        }
        keys.insert(record["key"].as_str().unwrap().to_owned());
        match expected.get(&file) {
            Some(exp) => problems.extend(check_result(&bucket, record, exp).await),
            None => problems.push(format!("{file}: reported but never sent")),
        }
        seen_files.insert(file);
    }
    for file in expected.keys() {
        if !seen_files.contains(file) {
            problems.push(format!("{file}: no report"));
        }
    }
    // Every object in the bucket is a reported result: no strays, no staged leftovers, no failures.
    for key in bucket.keys().await {
        if !keys.contains(&key) {
            problems.push(format!("unexpected object {key}"));
        }
    }
    if keys.len() != expected.len() {
        problems.push(format!(
            "{} result keys for {} files: not one per file",
            keys.len(),
            expected.len()
        ));
    }
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    if dead != 0 {
        problems.push(format!("{dead} jobs were dead-lettered"));
    }
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_uploads_with_the_same_file_name_produce_two_results() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("samename");
    let fixtures = TempDir::new("samename");
    let mut paths = Vec::new();
    for (dir, (w, h)) in [("a", (64u16, 48u16)), ("b", (80, 120))] {
        std::fs::create_dir_all(fixtures.0.join(dir)).unwrap();
        let path = fixtures.0.join(dir).join("photo.jpg");
        std::fs::write(&path, fixture_jpeg(w, h, w as u64, 20, 90)).unwrap();
        paths.push(path);
    }
    let (shells, mut producer, mut worker, address) =
        start_pipeline(&queue, &bucket, &endpoint, 8 << 20);
    let sent = send_and_wait(&address, &paths).await;
    let stopped = stop_shells(&mut producer, &mut worker);
    let mut objects = bucket.keys().await;
    objects.sort();
    let mut sizes = Vec::new();
    let mut judged = Vec::new();
    for record in &sent.records {
        let key = record["key"].as_str().unwrap_or_default();
        let data = bucket.get(key).await.unwrap_or_default();
        let source = std::fs::read(record["file"].as_str().unwrap()).unwrap();
        judged.push(judge(&source, 1, &data, FIXTURE_MIN_DB).map_err(|e| format!("{key}: {e}")));
        if let Ok(image) = ResultImage::decode(&data) {
            assert_eq!(
                image.orientation, 1,
                "{key}: the fixtures carry no orientation"
            );
            sizes.push(image.stored);
        }
    }
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&stopped);
    let records = &sent.records;
    assert_eq!(sent.code, Some(0), "cloudimg send failed: {sent:?}");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["status"] == "done"), "{records:?}");
    assert_ne!(records[0]["key"], records[1]["key"]);
    assert_eq!(objects.len(), 2, "expected two results, found {objects:?}");
    sizes.sort();
    assert_eq!(sizes, vec![(64, 48), (80, 120)]);
    // Each result is its own upload's picture, not the other `photo.jpg`'s.
    for judged in judged {
        judged.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_format_png_lands_a_gray_png_turned_upright_with_its_sources_pixels() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let Some(corpus) = corpus() else { return };
    // A photo stored 1200x1800 with EXIF orientation 6: it displays 1800x1200. PNG viewers ignore
    // EXIF, so the PNG must hold the turned pixels.
    let name = "conformance/jpeg/exif_orientation/photo_landscape_orientation_6.jpg";
    let row = manifest(&corpus)
        .into_iter()
        .find(|r| r.path == name)
        .unwrap_or_else(|| panic!("{name} is not in the manifest"));
    assert_eq!((row.orientation, row.displayed()), (6, (1800, 1200)));
    let source_path = corpus.join(name);
    let source = std::fs::read(&source_path).unwrap();
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("png");
    let (shells, mut producer, mut worker, address) =
        start_pipeline(&queue, &bucket, &endpoint, 8 << 20);
    let args: Vec<OsString> = vec![
        "--wait".into(),
        "--format".into(),
        "png".into(),
        source_path.clone().into_os_string(),
    ];
    let sent = send_async(&address, args).await;
    let stopped = stop_shells(&mut producer, &mut worker);
    let key = sent
        .records
        .first()
        .and_then(|r| r["key"].as_str())
        .map(str::to_owned);
    let object = match &key {
        Some(key) => bucket
            .client
            .get_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await
            .ok(),
        None => None,
    };
    let (content_type, data) = match object {
        Some(o) => (
            o.content_type().map(str::to_owned),
            o.body.collect().await.unwrap().into_bytes().to_vec(),
        ),
        None => (None, Vec::new()),
    };
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&stopped);
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let key = key.unwrap();
    assert!(key.ends_with(".png"), "{key}");
    assert_eq!(content_type.as_deref(), Some("image/png"));
    // Decoded whole by the png crate, one gray channel, upright (displayed size as stored), and
    // the source's own luma turned the EXIF way (the conformance bound of its class).
    let db =
        judge(&source, 6, &data, row.min_db().unwrap()).unwrap_or_else(|e| panic!("{key}: {e}"));
    // Left as stored, the same pixels would display 1200x1800: the judge sees the turn.
    assert!(judge(&source, 1, &data, 0.0).is_err());
    eprintln!("send --format png: {key}, {db:.2} dB against the turned source");
}
