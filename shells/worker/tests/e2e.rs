//! End to end on real servers: the real `cloudimg-producer` and `cloudimg-worker` binaries against
//! RabbitMQ and the S3 endpoint `scripts/test.sh` starts (moto), fed by the real `cloudimg send`.
//! Every object that lands in the bucket is checked.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::Client;
use support::*;

struct Bucket {
    client: Client,
    name: String,
}

impl Bucket {
    async fn create(endpoint: &str) -> Bucket {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .load()
            .await;
        let client = Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build(),
        );
        let name = format!(
            "cloudimg-e2e-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        client.create_bucket().bucket(&name).send().await.unwrap();
        Bucket { client, name }
    }

    async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return keys,
            }
        }
    }

    async fn delete(&self) {
        for key in self.keys().await {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await;
        }
        let _ = self.client.delete_bucket().bucket(&self.name).send().await;
    }
}

/// Producer and worker binaries sharing one queue and bucket.
struct Pipeline {
    producer: Service,
    worker: Service,
    address: String,
}

fn start_pipeline(queue: &str, bucket: &str, endpoint: &str, stage_over: u64) -> Pipeline {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let env = |command: &mut Command| {
        command
            .env("AMQP_URL", amqp_url())
            .env("CLOUDIMG_QUEUE", queue)
            .env("BUCKET_NAME", bucket)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("CLOUDIMG_OUT_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
    };
    let mut producer = Command::new(binary("cloudimg-producer"));
    env(&mut producer);
    producer
        .env("CLOUDIMG_LISTEN", &address)
        .env("CLOUDIMG_STAGE_OVER_BYTES", stage_over.to_string());
    let producer = Service::start("producer", producer);
    let mut worker = Command::new(binary("cloudimg-worker"));
    env(&mut worker);
    worker.env("CLOUDIMG_CONCURRENCY", "2");
    let worker = Service::start("worker", worker);
    assert!(
        wait_for_port(port, Duration::from_secs(20)),
        "the producer did not listen on {address}"
    );
    Pipeline {
        producer,
        worker,
        address,
    }
}

impl Pipeline {
    /// SIGTERM both; each must drain and exit 0.
    fn stop(mut self) {
        let status = self.producer.terminate(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "producer did not exit 0 on SIGTERM: {status:?}"
        );
        let status = self.worker.terminate(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "worker did not exit 0 on SIGTERM: {status:?}"
        );
    }
}

/// Runs `cloudimg send --json --wait` and returns its exit success and JSON lines.
fn send(address: &str, paths: &[PathBuf]) -> (bool, Vec<serde_json::Value>) {
    let output = Command::new(binary("cloudimg"))
        .arg("send")
        .args(["--json", "--wait", "--timeout", "900", "-c", "8"])
        .args(paths)
        .arg(address)
        .env_remove("CLOUDIMG_PRODUCER")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run cloudimg send");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    (output.status.success(), lines)
}

/// What a result object must be.
struct Expected {
    displayed: (u32, u32),
    source_name: String,
}

/// Orientation tag of a JPEG's own EXIF (1 when absent).
fn exif_orientation(jpeg: &[u8]) -> u32 {
    exif::Reader::new()
        .read_from_container(&mut std::io::Cursor::new(jpeg))
        .ok()
        .and_then(|e| {
            e.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                .and_then(|f| f.value.get_uint(0))
        })
        .unwrap_or(1)
}

/// Checks one result: a grayscale JPEG of the right displayed size, with the contract's
/// content type and metadata. Returns a description of every mismatch.
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
    let mut decoder = jpeg_decoder::Decoder::new(&data[..]);
    if let Err(e) = decoder.decode() {
        problems.push(format!("{file}: result does not decode: {e}"));
        return problems;
    }
    let info = decoder.info().unwrap();
    if info.pixel_format != jpeg_decoder::PixelFormat::L8 {
        problems.push(format!(
            "{file}: result is {:?}, not grayscale",
            info.pixel_format
        ));
    }
    let orientation = exif_orientation(&data);
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let displayed = if (5..=8).contains(&orientation) {
        (h, w)
    } else {
        (w, h)
    };
    if displayed != expected.displayed {
        problems.push(format!(
            "{file}: displays at {displayed:?} (stored {w}x{h}, orientation {orientation}), expected {:?}",
            expected.displayed
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

    // What we send: the bench folder as a folder, every `ok` conformance file by name, and a JPEG
    // over 4 MiB made here (staged: the producer stages above 4 MiB in this test).
    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut paths = vec![corpus.join("bench")];
    for row in &rows {
        let path = corpus.join(&row.path);
        let name = Path::new(&row.path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if row.path.starts_with("bench/") && row.expect == "ok" {
            expected.insert(
                path.display().to_string(),
                Expected {
                    displayed: row.displayed(),
                    source_name: name,
                },
            );
        } else if row.path.starts_with("conformance/") && row.expect == "ok" {
            paths.push(path.clone());
            expected.insert(
                path.display().to_string(),
                Expected {
                    displayed: row.displayed(),
                    source_name: name,
                },
            );
        }
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
        },
    );

    let pipeline = start_pipeline(&queue, &bucket.name, &endpoint, 4 << 20);
    let (ok, records) = tokio::task::spawn_blocking({
        let address = pipeline.address.clone();
        move || send(&address, &paths)
    })
    .await
    .unwrap();

    let mut problems = Vec::new();
    if !ok {
        problems.push("cloudimg send exited non-zero".to_owned());
    }
    let mut seen_files = HashSet::new();
    let mut keys = HashSet::new();
    for record in &records {
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
    assert_eq!(
        keys.len(),
        expected.len(),
        "result keys are not one per file"
    );
    assert_eq!(
        message_count(&connection, &format!("{queue}.dead")).await,
        0,
        "jobs were dead-lettered"
    );
    pipeline.stop();
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
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
    let pipeline = start_pipeline(&queue, &bucket.name, &endpoint, 8 << 20);
    let (ok, records) = tokio::task::spawn_blocking({
        let address = pipeline.address.clone();
        move || send(&address, &paths)
    })
    .await
    .unwrap();
    pipeline.stop();
    let mut objects = bucket.keys().await;
    objects.sort();
    let mut sizes = Vec::new();
    for key in &objects {
        let data = bucket
            .client
            .get_object()
            .bucket(&bucket.name)
            .key(key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes();
        let mut d = jpeg_decoder::Decoder::new(&data[..]);
        d.read_info().unwrap();
        let info = d.info().unwrap();
        sizes.push((info.width, info.height));
    }
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    assert!(ok, "cloudimg send failed: {records:?}");
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["status"] == "done"), "{records:?}");
    assert_ne!(records[0]["key"], records[1]["key"]);
    assert_eq!(objects.len(), 2, "expected two results, found {objects:?}");
    sizes.sort();
    assert_eq!(sizes, vec![(64, 48), (80, 120)]);
}
