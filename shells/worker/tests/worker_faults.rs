//! The worker process dies or is told to stop in the middle of a run (real binaries, RabbitMQ,
//! the S3 endpoint):
//!
//! * **SIGKILL**: nothing is acked that was not written, so a new worker finishes the run: every
//!   accepted image lands exactly once at its own key, nothing is dead-lettered or left queued.
//! * **A fleet**: three worker processes share one queue and one is SIGKILLed mid-run: the other
//!   two share the rest and the redeliveries, and every image still lands exactly once.
//! * **SIGTERM**: the worker stops consuming, finishes and acks what it holds, and exits 0 within
//!   a bounded time; every job is then either written or still queued, never both, never neither.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use cloudimg_test_support::*;

const IMAGES: usize = 40;

/// Makes `IMAGES` distinct JPEGs (a few tens of milliseconds of engine work each).
fn images(dir: &TempDir) -> Vec<(OsString, (u32, u32))> {
    (0..IMAGES)
        .map(|i| {
            let (w, h) = (900 + i as u16 * 8, 700);
            let path = dir.0.join(format!("img-{i:02}.jpg"));
            std::fs::write(&path, fixture_jpeg(w, h, i as u64, 60, 92)).unwrap();
            (path.into_os_string(), (u32::from(w), u32::from(h)))
        })
        .collect()
}

async fn results(bucket: &Bucket) -> BTreeSet<String> {
    bucket
        .keys()
        .await
        .into_iter()
        .filter(|k| k.starts_with("gray/"))
        .collect()
}

struct Run {
    bucket: Bucket,
    connection: lapin::Connection,
    shells: Shells,
    queue: String,
    producer: Service,
    _images_dir: TempDir,
    accepted: BTreeSet<String>,
    /// Each accepted key's source file.
    sources: BTreeMap<String, OsString>,
}

/// Producer and a first worker on a fresh queue and bucket, all `IMAGES` accepted.
async fn start_run(what: &str) -> Option<(Run, Service)> {
    let endpoint = s3_endpoint()?;
    let connection = broker().await?;
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue(what);
    let shells = Shells::on_s3(&queue, &bucket, &endpoint);
    let (producer, address) = shells.producer(&[]);
    let dir = TempDir::new(what);
    let files = images(&dir);
    // Queue everything first (no --wait), then start the worker: it is then always mid-run.
    let sent = send_async(
        &address,
        files.iter().map(|(p, _)| p.clone()).collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let sources: BTreeMap<String, OsString> = sent
        .records
        .iter()
        .map(|r| {
            let key = r["key"].as_str().unwrap().to_owned();
            (key, OsString::from(r["file"].as_str().unwrap()))
        })
        .collect();
    let accepted: BTreeSet<String> = sources.keys().cloned().collect();
    assert_eq!(accepted.len(), IMAGES);
    let worker = shells.worker(&[]);
    Some((
        Run {
            bucket,
            connection,
            shells,
            queue,
            producer,
            _images_dir: dir,
            accepted,
            sources,
        },
        worker,
    ))
}

impl Run {
    /// Waits until at least `n` results exist.
    async fn wait_results(&self, n: usize, timeout: Duration) -> BTreeSet<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = results(&self.bucket).await;
            if found.len() >= n || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every accepted image is exactly one grayscale object at its own key, holding its own
    /// source's picture ([`judge`]); nothing else, and
    /// nothing queued once the last acks have reached the broker (waited for up to 10 s).
    async fn check_all_landed_once(&self) -> Vec<String> {
        let (connection, queue) = (&self.connection, &self.queue);
        eventually(Duration::from_secs(10), async || {
            message_count(connection, queue).await == 0
        })
        .await;
        let mut problems = Vec::new();
        let keys: BTreeSet<String> = self.bucket.keys().await.into_iter().collect();
        if keys != self.accepted {
            problems.push(format!(
                "bucket keys differ from the accepted keys: missing {:?}, unexpected {:?}",
                self.accepted.difference(&keys).collect::<Vec<_>>(),
                keys.difference(&self.accepted).collect::<Vec<_>>()
            ));
        }
        for (key, source) in &self.sources {
            match self.bucket.get(key).await {
                Some(data) => {
                    if !ResultImage::decode(&data).is_ok_and(|image| image.is_grayscale()) {
                        problems.push(format!("{key} is not a grayscale JPEG"));
                    }
                    // Its own source's picture, whichever worker wrote it.
                    let source = std::fs::read(source).unwrap();
                    if let Err(e) = judge(&source, 1, &data, FIXTURE_MIN_DB) {
                        problems.push(format!("{key}: {e}"));
                    }
                }
                None => problems.push(format!("{key} is missing")),
            }
        }
        let queued = message_count(&self.connection, &self.queue).await;
        let dead = message_count(&self.connection, &format!("{}.dead", self.queue)).await;
        if queued != 0 || dead != 0 {
            problems.push(format!("{queued} still queued, {dead} dead-lettered"));
        }
        problems
    }

    async fn finish(mut self, problems: Vec<String>) {
        let p = self.producer.terminate(Duration::from_secs(20));
        delete_queues(&self.connection, &self.queue).await;
        self.bucket.delete().await;
        self.shells.assert_no_problems(&problems);
        assert!(p.is_some_and(|s| s.success()), "producer: {p:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_run_loses_nothing_and_a_new_one_finishes_exactly_once_per_key() {
    let Some((run, mut first)) = start_run("kill9").await else {
        return;
    };
    let before = run.wait_results(5, Duration::from_secs(60)).await;
    first.kill();
    let killed_at = Instant::now();
    let at_kill = results(&run.bucket).await.len();
    let queued = message_count(&run.connection, &run.queue).await as usize;
    let mut problems = Vec::new();
    if before.len() < 5 || at_kill >= IMAGES || queued == 0 {
        problems.push(format!(
            "the kill did not land mid-run: {at_kill} results, {queued} queued"
        ));
    }
    let metrics_port = free_port();
    let mut second = run.shells.worker(&[(
        "CLOUDIMG_METRICS_LISTEN",
        &format!("127.0.0.1:{metrics_port}"),
    )]);
    let all = run.wait_results(IMAGES, Duration::from_secs(120)).await;
    let recovered = killed_at.elapsed();
    problems.extend(run.check_all_landed_once().await);
    let metrics = scrape(metrics_port);
    let redone = metric(&metrics, "cloudimg_jobs_total{outcome=\"already_done\"}").unwrap_or(0.0);
    let done = metric(&metrics, "cloudimg_jobs_total{outcome=\"done\"}").unwrap_or(0.0);
    eprintln!(
        "kill -9 after {at_kill} of {IMAGES} results ({queued} still queued); the second worker \
         converted {done} and found {redone} redelivered jobs already written; all {} landed \
         {:.1}s after the kill",
        all.len(),
        recovered.as_secs_f64()
    );
    let w = second.terminate(Duration::from_secs(30));
    if !w.is_some_and(|s| s.success()) {
        problems.push(format!("second worker on SIGTERM: {w:?}"));
    }
    run.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_three_workers_loses_one_mid_run_and_every_image_lands_once() {
    let Some((run, mut first)) = start_run("fleet").await else {
        return;
    };
    let one_at_a_time = [("CLOUDIMG_CONCURRENCY", "1")];
    let ports = [free_port(), free_port()];
    let mut survivors: Vec<Service> = ports
        .iter()
        .map(|port| {
            let listen = format!("127.0.0.1:{port}");
            run.shells.worker(&[
                one_at_a_time[0],
                ("CLOUDIMG_METRICS_LISTEN", listen.as_str()),
            ])
        })
        .collect();
    let before = run.wait_results(8, Duration::from_secs(60)).await;
    first.kill();
    let at_kill = results(&run.bucket).await.len();
    let mut problems = Vec::new();
    if before.len() < 8 || at_kill >= IMAGES {
        problems.push(format!("the kill did not land mid-run: {at_kill} results"));
    }
    run.wait_results(IMAGES, Duration::from_secs(120)).await;
    problems.extend(run.check_all_landed_once().await);
    let shares: Vec<(f64, f64)> = ports
        .iter()
        .map(|&port| {
            let text = scrape(port);
            let count = |outcome: &str| {
                metric(
                    &text,
                    &format!("cloudimg_jobs_total{{outcome=\"{outcome}\"}}"),
                )
                .unwrap_or(0.0)
            };
            (count("done"), count("already_done"))
        })
        .collect();
    // The survivors took the rest between them: each converted some of it.
    if shares.iter().any(|(done, _)| *done == 0.0) {
        problems.push(format!("a surviving worker did nothing: {shares:?}"));
    }
    eprintln!(
        "fleet: killed one of three workers after {at_kill} of {IMAGES} results; the survivors \
         converted (done, found already written) {shares:?}"
    );
    for worker in &mut survivors {
        let status = worker.terminate(Duration::from_secs(30));
        if !status.is_some_and(|s| s.success()) {
            problems.push(format!("a surviving worker on SIGTERM: {status:?}"));
        }
    }
    run.finish(problems).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_acks_what_the_worker_holds_and_exits_0_before_its_drain_bound() {
    let Some((run, mut first)) = start_run("sigterm").await else {
        return;
    };
    run.wait_results(5, Duration::from_secs(60)).await;
    let asked = Instant::now();
    let status = first.terminate(Duration::from_secs(60));
    let took = asked.elapsed();
    let mut problems = Vec::new();
    if !status.is_some_and(|s| s.success()) {
        problems.push(format!("worker on SIGTERM: {status:?}"));
    }
    // The worker is gone: what is written was acked, what is queued was not written.
    // (Deliveries the worker had prefetched but not started go back when its link closes.)
    let (bucket, connection, queue) = (&run.bucket, &run.connection, &run.queue);
    eventually(Duration::from_secs(5), async || {
        results(bucket).await.len() + message_count(connection, queue).await as usize == IMAGES
    })
    .await;
    let written = results(&run.bucket).await;
    let queued = message_count(&run.connection, &run.queue).await as usize;
    if written.len() + queued != IMAGES || written.len() == IMAGES {
        problems.push(format!(
            "after the drain: {} written + {queued} queued != {IMAGES} sent (or the drain came too late)",
            written.len()
        ));
    }
    // It exited because it had finished what it held, not because the drain bound (30 s by
    // default) ran out and cut the link: the log says which.
    let log = first.log_text();
    if !log.contains("shutdown: consumer cancelled") || log.contains("drain timed out") {
        problems.push(format!(
            "the drain did not finish the jobs held by itself:\n{log}"
        ));
    }
    eprintln!(
        "SIGTERM: exit {status:?} after {:.2}s with {} written and {queued} queued",
        took.as_secs_f64(),
        written.len()
    );
    // A new worker does the rest.
    let mut second = run.shells.worker(&[]);
    run.wait_results(IMAGES, Duration::from_secs(120)).await;
    problems.extend(run.check_all_landed_once().await);
    let w = second.terminate(Duration::from_secs(30));
    if !w.is_some_and(|s| s.success()) {
        problems.push(format!("second worker on SIGTERM: {w:?}"));
    }
    run.finish(problems).await;
}

/// What S3 says about an object: enough to see whether anything rewrote it.
#[derive(Debug, PartialEq)]
struct Stored {
    bytes: Vec<u8>,
    etag: Option<String>,
    last_modified: Option<String>,
    metadata: BTreeMap<String, String>,
}

async fn stored(bucket: &Bucket, key: &str) -> Option<Stored> {
    let object = bucket
        .client
        .get_object()
        .bucket(&bucket.name)
        .key(key)
        .send()
        .await
        .ok()?;
    Some(Stored {
        etag: object.e_tag().map(str::to_owned),
        last_modified: object.last_modified().map(|t| t.to_string()),
        metadata: object
            .metadata()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        bytes: object.body.collect().await.unwrap().into_bytes().to_vec(),
    })
}

/// Takes every message of `queue` without acking it (on `channel`), by job id.
async fn take_all(channel: &lapin::Channel, queue: &str) -> BTreeMap<String, (lapin::Acker, bool)> {
    use lapin::options::BasicGetOptions;
    let mut taken = BTreeMap::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
    {
        let headers = message.delivery.properties.headers().clone();
        let id = cloudimg_runtime::amqp::header_str(headers.as_ref(), "x-cloudimg-job-id")
            .expect("a job id header");
        taken.insert(id, (message.delivery.acker, message.delivery.redelivered));
    }
    taken
}

async fn requeue(taken: BTreeMap<String, (lapin::Acker, bool)>) {
    for (acker, _) in taken.into_values() {
        acker
            .nack(lapin::options::BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_job_whose_result_exists_is_acked_without_writing_anything() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("redeliver");
    let shells = Shells::on_s3(&queue, &bucket, &endpoint);
    let (mut producer, address) = shells.producer(&[]);
    let dir = TempDir::new("redeliver");
    // Two jobs queued with no worker running: `done` will have a result before the worker sees
    // it, `fresh` will not.
    let files: Vec<OsString> = (0..2)
        .map(|i| {
            let path = dir.0.join(format!("img-{i}.jpg"));
            std::fs::write(&path, fixture_jpeg(320, 240, 70 + i, 40, 90)).unwrap();
            path.into_os_string()
        })
        .collect();
    let sent = send_async(&address, files).await;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let (done, fresh) = (&sent.records[0], &sent.records[1]);
    let id = |r: &serde_json::Value| r["job_id"].as_str().unwrap().to_owned();
    let key = |r: &serde_json::Value| r["key"].as_str().unwrap().to_owned();

    // A consumer takes both, as a worker would, and writes `done`'s result before giving both
    // back: what a worker leaves when it dies between the write and the ack. The result written
    // here is a real conversion, at quality 50 and with a metadata mark, so a rewrite by the
    // worker (quality 85, its own metadata) would change its bytes, ETag and metadata.
    let channel = connection.create_channel().await.unwrap();
    let taken = take_all(&channel, &queue).await;
    assert_eq!(taken.len(), 2, "both jobs are on the queue");
    let source = std::fs::read(done["file"].as_str().unwrap()).unwrap();
    let options = cloudimg_engine::Options {
        quality: cloudimg_engine::Quality::Level(50),
        ..Default::default()
    };
    let written = cloudimg_engine::convert(&source, &options).unwrap().data;
    bucket
        .client
        .put_object()
        .bucket(&bucket.name)
        .key(key(done))
        .content_type("image/jpeg")
        .metadata("job-id", id(done))
        .metadata("written-by", "the test, before the redelivery")
        .body(written.clone().into())
        .send()
        .await
        .unwrap();
    let before = stored(&bucket, &key(done)).await.unwrap();
    requeue(taken).await;
    // The broker marks both redelivered (seen here, and given back once more).
    let again = take_all(&channel, &queue).await;
    let marked = again
        .values()
        .filter(|(_, redelivered)| *redelivered)
        .count();
    requeue(again).await;
    let _ = channel.close(200, "requeued".into()).await;
    // A rewrite would now carry a later Last-Modified (S3 keeps whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let wm = free_port();
    let mut worker = shells.worker(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{wm}"))]);
    let fresh_landed = eventually(Duration::from_secs(60), async || {
        bucket.get(&key(fresh)).await.is_some()
    })
    .await;
    let metrics = settled_worker_metrics(wm, 2.0, Duration::from_secs(20)).await;
    let count = |outcome: &str| {
        metric(
            &metrics,
            &format!("cloudimg_jobs_total{{outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let after = stored(&bucket, &key(done)).await.unwrap();
    let mut problems = Vec::new();
    if marked != 2 {
        problems.push(format!("{marked} of 2 messages marked redelivered"));
    }
    if (count("already_done"), count("done")) != (1.0, 1.0) {
        problems.push(format!(
            "outcomes: already_done {}, done {} (expected 1 and 1): {metrics}",
            count("already_done"),
            count("done")
        ));
    }
    if after != before || after.bytes != written {
        problems.push(format!(
            "the existing result changed: ETag {:?} -> {:?}, Last-Modified {:?} -> {:?}, \
             metadata {:?} -> {:?}, {} -> {} bytes",
            before.etag,
            after.etag,
            before.last_modified,
            after.last_modified,
            before.metadata,
            after.metadata,
            before.bytes.len(),
            after.bytes.len()
        ));
    }
    // The redelivery whose result did not exist was converted: its own picture.
    let fresh_source = std::fs::read(fresh["file"].as_str().unwrap()).unwrap();
    let fresh_result = bucket.get(&key(fresh)).await.unwrap_or_default();
    if !fresh_landed {
        problems.push("the redelivered job without a result never landed".into());
    } else if let Err(e) = judge(&fresh_source, 1, &fresh_result, FIXTURE_MIN_DB) {
        problems.push(format!("{}: {e}", key(fresh)));
    }
    let mut keys = bucket.keys().await;
    keys.sort();
    let mut want = vec![key(done), key(fresh)];
    want.sort();
    if keys != want {
        problems.push(format!("bucket holds {keys:?}, expected {want:?}"));
    }
    let queued = message_count(&connection, &queue).await;
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    if queued != 0 || dead != 0 {
        problems.push(format!("{queued} still queued, {dead} dead-lettered"));
    }
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}
