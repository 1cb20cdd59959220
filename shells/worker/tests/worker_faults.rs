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
async fn sigterm_mid_run_acks_what_the_worker_holds_and_exits_0_quickly() {
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
    if took > Duration::from_secs(15) {
        problems.push(format!("the drain took {took:?}"));
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
