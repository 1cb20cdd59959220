//! The worker in-process against the real broker, with a local-directory store: a job becomes a
//! result and an ack; poison goes to `<queue>.dead` with its headers and a failure marker; a
//! staged upload is fetched and deleted once the result exists; shutdown drains.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudimg_engine::Limits;
use cloudimg_runtime::amqp::header_str;
use cloudimg_runtime::jobs::{FailureMarker, JobId};
use cloudimg_runtime::proto::{ConvertOptions, ImageJob, StagedObject, image_job};
use cloudimg_runtime::settings::{BrokerSettings, QueueType, StoreSettings};
use cloudimg_test_support::*;
use cloudimg_worker::Config;
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use prost::Message;
use tokio_util::sync::CancellationToken;

struct Worker {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), cloudimg_worker::Error>>,
}

fn start_worker(queue: &str, dir: &Path) -> Worker {
    start_worker_with(queue, dir, |_| {})
}

/// A worker whose configuration `tweak` changed from the tests' default.
fn start_worker_with(queue: &str, dir: &Path, tweak: impl FnOnce(&mut Config)) -> Worker {
    let mut config = Config {
        broker: BrokerSettings::new(amqp_url(), queue),
        store: StoreSettings::Local {
            dir: dir.to_path_buf(),
        },
        concurrency: 2,
        limits: Limits::default(),
        job_timeout: Duration::from_secs(60),
        memory_budget: 1 << 30,
        service: Default::default(),
    };
    tweak(&mut config);
    let stop = CancellationToken::new();
    let task = tokio::spawn(cloudimg_worker::run(config, stop.clone()));
    Worker { stop, task }
}

impl Worker {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the worker drains within 30 s")
            .unwrap()
            .unwrap();
    }
}

async fn publisher(connection: &lapin::Connection, queue: &str) -> Channel {
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let topology = cloudimg_runtime::amqp::Topology {
        queue: queue.to_owned(),
        queue_type: QueueType::Classic,
    };
    topology.declare(&channel).await.unwrap();
    channel
}

async fn publish(channel: &Channel, queue: &str, body: &[u8], job_id: &str) {
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_headers(cloudimg_runtime::amqp::job_headers(job_id)),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());
}

fn job(id: &JobId, payload: image_job::Payload) -> ImageJob {
    ImageJob {
        job_id: id.to_string(),
        output_key: id.result_key(cloudimg_engine::OutputFormat::Jpeg),
        options: Some(ConvertOptions::default()),
        source_name: "photo.jpg".into(),
        payload: Some(payload),
        accepted_unix_ms: 0,
    }
}

/// Stages `data` for `id` in the local store under `root` (as the producer would) and publishes
/// the job referring to it; returns where the staged upload lies.
async fn publish_staged(
    channel: &Channel,
    queue: &str,
    root: &Path,
    id: &JobId,
    data: &[u8],
) -> PathBuf {
    let path = root.join(id.staging_key());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
    let body = job(
        id,
        image_job::Payload::Staged(StagedObject {
            key: id.staging_key(),
            size: data.len() as u64,
        }),
    )
    .encode_to_vec();
    publish(channel, queue, &body, &id.to_string()).await;
    path
}

async fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.is_file() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_becomes_a_grayscale_result_and_a_staged_upload_is_cleaned_up() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("worker-ok");
    let dir = TempDir::new("worker-ok");
    let channel = publisher(&connection, &queue).await;
    let worker = start_worker(&queue, &dir.0);

    let inline = JobId::random();
    let data = fixture_jpeg(120, 80, 1, 30, 90);
    publish(
        &channel,
        &queue,
        &job(
            &inline,
            image_job::Payload::Inline(Bytes::from(data.clone())),
        )
        .encode_to_vec(),
        &inline.to_string(),
    )
    .await;

    let staged = JobId::random();
    let staged_source = fixture_jpeg(64, 96, 2, 30, 90);
    let staged_path = publish_staged(&channel, &queue, &dir.0, &staged, &staged_source).await;

    for (id, source, (w, h)) in [
        (inline, &data, (120, 80)),
        (staged, &staged_source, (64, 96)),
    ] {
        let result = dir
            .0
            .join(id.result_key(cloudimg_engine::OutputFormat::Jpeg));
        assert!(
            wait_for_file(&result, Duration::from_secs(30)).await,
            "no result for {id}"
        );
        let written = std::fs::read(&result).unwrap();
        let image = ResultImage::decode(&written).unwrap();
        assert!(image.is_grayscale());
        assert_eq!((image.stored, image.orientation), ((w, h), 1));
        // Its own source's picture, not only a gray image of the right size.
        if let Err(e) = judge(source, 1, &written, FIXTURE_MIN_DB) {
            panic!("{id}: {e}");
        }
    }
    // The staged upload is deleted once its result exists (right after the write, before the ack).
    let deadline = Instant::now() + Duration::from_secs(5);
    while staged_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!staged_path.exists(), "the staged upload was not deleted");
    worker.stop().await;
    // Both were acked: nothing is left on either queue.
    assert_eq!(message_count(&connection, &queue).await, 0);
    assert_eq!(
        message_count(&connection, &format!("{queue}.dead")).await,
        0
    );
    delete_queues(&connection, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_ends_in_the_dead_letter_queue_with_headers_and_a_marker() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("worker-poison");
    let dir = TempDir::new("worker-poison");
    let channel = publisher(&connection, &queue).await;
    let worker = start_worker(&queue, &dir.0);

    // A truncated JPEG: the engine refuses it (permanent), so it must not be retried.
    let truncated = JobId::random();
    let mut data = fixture_jpeg(200, 150, 3, 50, 90);
    data.truncate(data.len() / 2);
    publish(
        &channel,
        &queue,
        &job(&truncated, image_job::Payload::Inline(Bytes::from(data))).encode_to_vec(),
        &truncated.to_string(),
    )
    .await;
    // Not an ImageJob at all.
    publish(&channel, &queue, b"\xff\xff garbage", "not-a-job").await;
    // A job whose staged upload does not exist.
    let missing = JobId::random();
    let body = job(
        &missing,
        image_job::Payload::Staged(StagedObject {
            key: missing.staging_key(),
            size: 10,
        }),
    )
    .encode_to_vec();
    publish(&channel, &queue, &body, &missing.to_string()).await;
    // A staged truncated JPEG: dead-lettered like the inline one, and its staged upload deleted
    // once the dead letter is settled (the failure is permanent; nothing will read it again).
    let staged_bad = JobId::random();
    let mut data = fixture_jpeg(200, 150, 4, 50, 90);
    data.truncate(data.len() / 2);
    let staged_path = publish_staged(&channel, &queue, &dir.0, &staged_bad, &data).await;

    let marker = dir.0.join(truncated.failure_key());
    assert!(
        wait_for_file(&marker, Duration::from_secs(30)).await,
        "no failure marker"
    );
    let marker: FailureMarker = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    assert_eq!(marker.job_id, truncated.to_string());
    assert_eq!(marker.kind, "invalid");
    assert_eq!(marker.source_name, "photo.jpg");
    assert!(wait_for_file(&dir.0.join(missing.failure_key()), Duration::from_secs(30)).await);

    let dead = format!("{queue}.dead");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    while messages.len() < 4 && Instant::now() < deadline {
        match channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(m) => messages.push(m.delivery),
            None => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(messages.len(), 4, "expected 4 dead letters");
    let mut by_job = std::collections::BTreeMap::new();
    for m in &messages {
        let headers = m.properties.headers().clone();
        let id = header_str(headers.as_ref(), "x-cloudimg-job-id").expect("job id header");
        let error = header_str(headers.as_ref(), "x-cloudimg-error").expect("error header");
        by_job.insert(id, error);
    }
    assert!(
        by_job[&truncated.to_string()].contains("invalid JPEG"),
        "{by_job:?}"
    );
    assert!(
        by_job[&missing.to_string()].contains("missing"),
        "{by_job:?}"
    );
    assert!(by_job["not-a-job"].contains("ImageJob"), "{by_job:?}");
    assert!(
        by_job[&staged_bad.to_string()].contains("invalid JPEG"),
        "{by_job:?}"
    );
    // The dead-lettered job's staged upload is gone (deleted right after its dead letter).
    let deadline = Instant::now() + Duration::from_secs(10);
    while staged_path.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !staged_path.exists(),
        "the dead-lettered job's staged upload was kept"
    );
    // Nothing else landed and nothing is stuck on the work queue.
    assert!(!dir.0.join("gray").exists());
    worker.stop().await;
    assert_eq!(message_count(&connection, &queue).await, 0);
    delete_queues(&connection, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_run_finishes_and_acks_what_it_holds_and_loses_nothing() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("worker-drain");
    let dir = TempDir::new("worker-drain");
    let channel = publisher(&connection, &queue).await;
    let jobs: Vec<JobId> = (0..12).map(|_| JobId::random()).collect();
    let data = Bytes::from(fixture_jpeg(1600, 1200, 9, 60, 92));
    for id in &jobs {
        let body = job(id, image_job::Payload::Inline(data.clone())).encode_to_vec();
        publish(&channel, &queue, &body, &id.to_string()).await;
    }
    let worker = start_worker(&queue, &dir.0);
    // Stop as soon as the first result lands: the worker holds more jobs (prefetch 2) right then.
    let gray = dir.0.join("gray");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && std::fs::read_dir(&gray).map_or(true, |mut d| d.next().is_none())
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.stop().await;

    let done: Vec<&JobId> = jobs
        .iter()
        .filter(|id| {
            dir.0
                .join(id.result_key(cloudimg_engine::OutputFormat::Jpeg))
                .is_file()
        })
        .collect();
    let queued = message_count(&connection, &queue).await as usize;
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    delete_queues(&connection, &queue).await;
    assert!(
        !done.is_empty() && done.len() < jobs.len(),
        "stopped too late to prove anything: {} done",
        done.len()
    );
    assert_eq!(dead, 0);
    // Every job is exactly once either done (written, then acked) or back on the queue: a result
    // whose message were still queued would mean an ack was skipped; a job in neither, a loss.
    assert_eq!(
        done.len() + queued,
        jobs.len(),
        "{} done + {queued} queued != {} sent",
        done.len(),
        jobs.len()
    );
}

/// Publishes one job carrying `data` to a worker configured by `tweak`, and returns the kind its
/// failure marker and its dead letter name (they must agree); no result may be written.
async fn dead_letter_kind(what: &str, data: Vec<u8>, tweak: impl FnOnce(&mut Config)) -> String {
    let connection = broker().await.expect("checked by the caller");
    let queue = unique_queue(what);
    let dir = TempDir::new(what);
    let channel = publisher(&connection, &queue).await;
    let worker = start_worker_with(&queue, &dir.0, tweak);
    let id = JobId::random();
    publish(
        &channel,
        &queue,
        &job(&id, image_job::Payload::Inline(Bytes::from(data))).encode_to_vec(),
        &id.to_string(),
    )
    .await;
    let marker = dir.0.join(id.failure_key());
    assert!(
        wait_for_file(&marker, Duration::from_secs(30)).await,
        "no marker"
    );
    let marker: FailureMarker = serde_json::from_slice(&std::fs::read(&marker).unwrap()).unwrap();
    let dead = format!("{queue}.dead");
    let deadline = Instant::now() + Duration::from_secs(10);
    let message = loop {
        if let Some(m) = channel
            .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break m.delivery;
        }
        assert!(Instant::now() < deadline, "nothing dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let headers = message.properties.headers().clone();
    assert_eq!(
        header_str(headers.as_ref(), "x-cloudimg-error-kind").as_deref(),
        Some(marker.kind.as_str()),
        "{marker:?}"
    );
    assert!(
        !dir.0
            .join(id.result_key(cloudimg_engine::OutputFormat::Jpeg))
            .exists()
    );
    worker.stop().await;
    assert_eq!(message_count(&connection, &queue).await, 0);
    delete_queues(&connection, &queue).await;
    marker.kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workers_own_limits_dead_letter_an_image_over_them_as_over_limit() {
    if broker().await.is_none() {
        return;
    }
    // A worker configured tighter than whoever queued the job (CLOUDIMG_MAX_PIXELS and
    // CLOUDIMG_MAX_UPLOAD_BYTES apply on both sides): it refuses from the header, permanently.
    let data = fixture_jpeg(120, 80, 5, 30, 90); // 9,600 pixels
    let kind = dead_letter_kind("worker-limits", data, |c| c.limits.max_pixels = 5_000).await;
    assert_eq!(kind, "over_limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversion_past_the_job_timeout_is_dead_lettered_as_timeout() {
    if broker().await.is_none() {
        return;
    }
    // 12 megapixels take tens of milliseconds at the engine's best; the timeout is 1 ms.
    let data = fixture_jpeg(4000, 3000, 6, 30, 90);
    let kind = dead_letter_kind("worker-timeout", data, |c| {
        c.job_timeout = Duration::from_millis(1)
    })
    .await;
    assert_eq!(kind, "timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_the_whole_memory_budget_is_dead_lettered_as_over_budget() {
    if broker().await.is_none() {
        return;
    }
    // 3 megapixels need several MiB at their peak, by the engine's estimate; the budget is 1 MiB.
    let data = fixture_jpeg(2000, 1500, 7, 30, 90);
    let kind = dead_letter_kind("worker-budget", data, |c| c.memory_budget = 1 << 20).await;
    assert_eq!(kind, "over_budget");
}
