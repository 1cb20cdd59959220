//! Store faults: the S3 endpoint stops answering (stall) or refuses every connection, through a
//! test-owned TCP proxy in front of moto (moto itself is never touched).
//!
//! * The worker holds its jobs and retries with backoff; nothing is dead-lettered for a transient
//!   error, and everything lands once the store is back. Each outage outlasts the S3 attempt
//!   timeout the shells are given here (`CLOUDIMG_S3_ATTEMPT_TIMEOUT=1s`, three attempts), so a
//!   stalled request really times out and is retried: every round counts store errors.
//!   Meanwhile `GetJob` answers UNAVAILABLE (never pending or done), and `cloudimg send --wait`
//!   keeps polling through it.
//! * A job whose store call is being retried is handed back to the queue, unwritten and not
//!   dead-lettered, when the broker link drops and when shutdown begins.
//! * The drain is bounded: a job stuck in a stalled store request holds the worker's exit for
//!   `CLOUDIMG_DRAIN_SECONDS`, no longer, and goes back to the queue; a second signal exits at
//!   once with 130.

use std::ffi::OsString;
use std::time::{Duration, Instant};

use cloudimg_runtime::proto::JobState;
use cloudimg_test_support::*;

/// Each outage: longer than the three 1 s attempts of one store call.
const OUTAGE: Duration = Duration::from_secs(6);
const ATTEMPT_TIMEOUT: (&str, &str) = ("CLOUDIMG_S3_ATTEMPT_TIMEOUT", "1s");
/// Small uploads travel inline (the threshold set high here, over the 64 KiB default): the
/// producer accepts them without the store, so only the worker meets the outage.
const INLINE: (&str, &str) = ("CLOUDIMG_STAGE_OVER_BYTES", "15728640");

/// The S3 endpoint's `HOST:PORT`, for a proxy in front of it.
fn upstream(endpoint: &str) -> String {
    endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned()
}

fn metrics_env(port: u16) -> (&'static str, String) {
    ("CLOUDIMG_METRICS_LISTEN", format!("127.0.0.1:{port}"))
}

/// `n` fixture JPEGs of 320x240 in `dir`, named `<prefix>-<i>.jpg`.
fn write_images(dir: &TempDir, prefix: &str, n: usize, seed: u64) -> Vec<OsString> {
    (0..n)
        .map(|i| {
            let path = dir.0.join(format!("{prefix}-{i}.jpg"));
            std::fs::write(&path, fixture_jpeg(320, 240, seed + i as u64, 40, 90)).unwrap();
            path.into_os_string()
        })
        .collect()
}

/// Every `done` record's result is its own source's picture.
async fn judge_records(bucket: &Bucket, records: &[serde_json::Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for record in records {
        let key = record["key"].as_str().unwrap_or_default();
        let data = bucket.get(key).await.unwrap_or_default();
        let source = std::fs::read(record["file"].as_str().unwrap_or_default()).unwrap_or_default();
        if let Err(e) = judge(&source, 1, &data, FIXTURE_MIN_DB) {
            problems.push(format!("{key}: {e}"));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_retries_through_a_stalled_or_refusing_store_and_dead_letters_nothing() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let proxy = Proxy::start(&upstream(&endpoint)).await;
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("store");
    let shells = Shells::new(
        amqp_url(),
        &queue,
        StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint: format!("http://127.0.0.1:{}", proxy.port),
        },
    );
    let wm = free_port();
    let w_metrics = metrics_env(wm);
    let (mut producer, address) = shells.producer(&[ATTEMPT_TIMEOUT, INLINE]);
    let mut worker = shells.worker(&[ATTEMPT_TIMEOUT, (w_metrics.0, &w_metrics.1)]);
    let dir = TempDir::new("store-images");
    let mut problems = Vec::new();
    let mut report = Vec::new();
    let mut records = Vec::new();

    for (round, mode) in [ProxyMode::Refuse, ProxyMode::Stall]
        .into_iter()
        .enumerate()
    {
        let files = write_images(&dir, &format!("r{round}"), 8, round as u64 * 10);
        let errors = || metric(&scrape(wm), "cloudimg_store_errors_total").unwrap_or(0.0);
        let errors_before = errors();
        let written_before = bucket.keys().await.len(); // straight to moto, not through the proxy
        proxy.set(mode);
        let outage_started = Instant::now();
        // Small uploads travel inline: the producer accepts them without the store.
        let mut args: Vec<OsString> = ["--wait", "--timeout", "120"]
            .iter()
            .map(OsString::from)
            .collect();
        args.extend(files.iter().cloned());
        let waiting = tokio::spawn({
            let address = address.clone();
            async move { send_async(&address, args).await }
        });
        // One more upload, asked about with GetJob while the store is out.
        let probe = upload_raw(&address, "probe.jpg", fixture_jpeg(96, 64, 99, 20, 90))
            .await
            .expect("an inline upload is accepted without the store");
        let asked = tokio::spawn({
            let (address, probe) = (address.clone(), probe.clone());
            async move { get_job(&address, &probe.job_id, &probe.key).await }
        });
        tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;

        // Still out: nothing landed, nothing given up on, this round's store errors counted (the
        // requests failed or timed out and were retried), and GetJob has answered UNAVAILABLE (the
        // store cannot say whether the job is done).
        let metrics = scrape(wm);
        let dead =
            metric(&metrics, "cloudimg_jobs_total{outcome=\"dead_lettered\"}").unwrap_or(0.0);
        let held = metric(&metrics, "cloudimg_jobs_in_flight").unwrap_or(0.0);
        let round_errors = errors() - errors_before;
        if dead != 0.0 || held < 1.0 || round_errors < 1.0 {
            problems.push(format!(
                "{mode:?}: during the outage {dead} dead-lettered, {held} held, {round_errors} \
                 store errors"
            ));
        }
        let written_during = bucket.keys().await.len() - written_before;
        if written_during != 0 {
            problems.push(format!(
                "{mode:?}: {written_during} objects written during the outage"
            ));
        }
        if !asked.is_finished() {
            problems.push(format!("{mode:?}: GetJob did not answer during the outage"));
        }
        match asked.await.unwrap() {
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            other => problems.push(format!("{mode:?}: GetJob during the outage: {other:?}")),
        }

        proxy.set(ProxyMode::Forward);
        let back = Instant::now();
        let sent = waiting.await.unwrap();
        let landed_after = back.elapsed();
        if sent.code != Some(0) || sent.records.iter().any(|r| r["status"] != "done") {
            problems.push(format!("{mode:?}: {:?}", sent.records));
        }
        let probe_done = eventually(Duration::from_secs(30), async || {
            get_job(&address, &probe.job_id, &probe.key)
                .await
                .is_ok_and(|r| r.state == JobState::Done as i32)
        })
        .await;
        if !probe_done {
            problems.push(format!(
                "{mode:?}: GetJob never said done once the store was back"
            ));
        }
        report.push(format!(
            "{mode:?} for {:.1}s: {round_errors} store errors retried, GetJob UNAVAILABLE, all \
             {} done {:.1}s after the store came back",
            back.duration_since(outage_started).as_secs_f64(),
            sent.records.len(),
            landed_after.as_secs_f64()
        ));
        records.extend(sent.records);
    }

    let metrics = settled_worker_metrics(wm, 18.0, Duration::from_secs(20)).await;
    let done = metric(&metrics, "cloudimg_jobs_total{outcome=\"done\"}").unwrap_or(0.0);
    if done != 18.0 {
        problems.push(format!("{done} jobs done, expected 18 (16 sent, 2 probes)"));
    }
    problems.extend(judge_records(&bucket, &records).await);
    let keys = bucket.keys().await;
    if keys.len() != 18 || keys.iter().any(|k| !k.starts_with("gray/")) {
        problems.push(format!("bucket holds {keys:?}"));
    }
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    if dead != 0 {
        problems.push(format!("{dead} dead-lettered"));
    }
    eprintln!("store faults: {}", report.join("; "));
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}

/// How many log lines contain `needle`.
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_retry_goes_back_to_the_queue_when_the_link_drops_and_when_shutdown_begins() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let Some(broker_link) = broker_proxy().await else {
        return;
    };
    let s3 = Proxy::start(&upstream(&endpoint)).await;
    s3.set(ProxyMode::Refuse);
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("handback");
    // The worker reaches the broker through a proxy the test cuts, and S3 through one that
    // refuses; the producer (inline uploads: no store needed) talks to the broker directly.
    let shells = Shells::new(
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker_link.port),
        &queue,
        StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint: format!("http://127.0.0.1:{}", s3.port),
        },
    );
    let (mut producer, address) = shells.producer(&[("AMQP_URL", &amqp_url()), INLINE]);
    let wm = free_port();
    let w_metrics = metrics_env(wm);
    let mut worker = shells.worker(&[
        ATTEMPT_TIMEOUT,
        (w_metrics.0, &w_metrics.1),
        ("CLOUDIMG_DRAIN_SECONDS", "20"),
    ]);
    let dir = TempDir::new("handback-images");
    let files = write_images(&dir, "img", 2, 40);
    let sent = send_async(&address, files.clone()).await;
    let mut problems = Vec::new();
    if sent.code != Some(0) {
        problems.push(format!("not accepted: {sent:?}"));
    }
    let gauge = |name: &str| metric(&scrape(wm), name).unwrap_or(-1.0);
    let retrying = async || {
        gauge("cloudimg_jobs_in_flight") == 2.0 && gauge("cloudimg_store_errors_total") >= 1.0
    };
    if !eventually(Duration::from_secs(30), retrying).await {
        problems.push("the worker never held both jobs in store retries".into());
    }
    let errors_before_cut = gauge("cloudimg_store_errors_total");

    // The broker link drops: both jobs stop retrying and go back (the broker redelivers them on
    // the next link, where the store still refuses and they are retried again).
    let cut = broker_link.cut();
    let handed_back = eventually(Duration::from_secs(30), async || {
        gauge("cloudimg_jobs_total{outcome=\"requeued\"}") >= 2.0
    })
    .await;
    let retried_again = eventually(Duration::from_secs(30), async || {
        gauge("cloudimg_broker_connects_total") >= 2.0
            && gauge("cloudimg_jobs_in_flight") == 2.0
            && gauge("cloudimg_store_errors_total") > errors_before_cut
    })
    .await;
    if cut == 0 || !handed_back || !retried_again {
        problems.push(format!(
            "link cut ({cut} connections): handed back {handed_back}, redelivered and retried {retried_again}"
        ));
    }

    // Shutdown: both jobs stop retrying at once and go back; the drain does not wait them out.
    let asked = Instant::now();
    let status = worker.terminate(Duration::from_secs(60));
    let took = asked.elapsed();
    let log = worker.log_text();
    let handed = count_lines(&log, "job handed back to the broker");
    if !status.is_some_and(|s| s.success())
        || handed < 4
        || log.contains("drain timed out")
        || took >= Duration::from_secs(20)
    {
        problems.push(format!(
            "shutdown during store retries: exit {status:?} after {took:?}, {handed} jobs handed back \
             (2 on the cut, 2 on shutdown expected), drain timed out: {}",
            log.contains("drain timed out")
        ));
    }
    let requeued = eventually(Duration::from_secs(10), async || {
        message_count(&connection, &queue).await == 2
    })
    .await;
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    let written = bucket.keys().await;
    if !requeued || dead != 0 || !written.is_empty() {
        problems.push(format!(
            "after the shutdown: back in the queue {requeued}, {dead} dead-lettered, written {written:?}"
        ));
    }

    // The store is back: a new worker converts both, each its own picture.
    s3.set(ProxyMode::Forward);
    let mut second = shells.worker(&[ATTEMPT_TIMEOUT]);
    let landed = eventually(Duration::from_secs(60), async || {
        bucket.keys().await.len() == 2
    })
    .await;
    if !landed {
        problems.push(format!(
            "after the store came back: {:?}",
            bucket.keys().await
        ));
    }
    problems.extend(judge_records(&bucket, &sent.records).await);
    eprintln!(
        "store retries handed back: {handed} (cut {cut} broker connections, then SIGTERM: exit \
         after {:.2}s); both landed once the store was back",
        took.as_secs_f64()
    );
    problems.extend(stop_shells(&mut producer, &mut second));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stuck_in_a_store_request_holds_the_drain_only_to_its_bound_and_a_second_signal_exits_at_once()
 {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let s3 = Proxy::start(&upstream(&endpoint)).await;
    s3.set(ProxyMode::Stall);
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("drainbound");
    let shells = Shells::new(
        amqp_url(),
        &queue,
        StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint: format!("http://127.0.0.1:{}", s3.port),
        },
    );
    let (mut producer, address) = shells.producer(&[INLINE]);
    let dir = TempDir::new("drainbound-images");
    let files = write_images(&dir, "img", 1, 50);
    let sent = send_async(&address, files).await;
    assert_eq!(sent.code, Some(0), "{sent:?}");
    let mut problems = Vec::new();

    // The default attempt timeout (30 s): the store request the job waits on outlasts the drain.
    let held = |port: u16| async move {
        eventually(Duration::from_secs(30), async || {
            metric(&scrape(port), "cloudimg_jobs_in_flight") == Some(1.0)
        })
        .await
    };
    let wm = free_port();
    let w_metrics = metrics_env(wm);
    let mut first = shells.worker(&[(w_metrics.0, &w_metrics.1), ("CLOUDIMG_DRAIN_SECONDS", "2")]);
    let holding = held(wm).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // converted; its put is stalled
    let asked = Instant::now();
    let status = first.terminate(Duration::from_secs(60));
    let took = asked.elapsed();
    let log = first.log_text();
    // It waited for the job as long as the bound, then closed the link rather than wait more.
    if !holding
        || !status.is_some_and(|s| s.success())
        || took < Duration::from_secs(2)
        || took > Duration::from_secs(15)
        || !log.contains("drain timed out")
    {
        problems.push(format!(
            "drain bound 2 s: held a job {holding}, exit {status:?} after {took:?}, logged the \
             timeout {}",
            log.contains("drain timed out")
        ));
    }
    let requeued = eventually(Duration::from_secs(10), async || {
        message_count(&connection, &queue).await == 1
    })
    .await;
    if !requeued {
        problems.push("the job held past the drain bound is not back in the queue".into());
    }

    // A second worker gets it redelivered (its result check is stalled now); SIGTERM starts a
    // 30 s drain, a second SIGTERM ends it at once.
    let wm = free_port();
    let w_metrics = metrics_env(wm);
    let mut second = shells.worker(&[(w_metrics.0, &w_metrics.1)]);
    let holding = held(wm).await;
    second.signal_term();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let draining = second.running();
    let asked = Instant::now();
    let status = second.terminate(Duration::from_secs(10));
    let took = asked.elapsed();
    if !holding
        || !draining
        || status.and_then(|s| s.code()) != Some(130)
        || took > Duration::from_secs(3)
    {
        problems.push(format!(
            "second signal: held {holding}, still draining after the first {draining}, exit \
             {status:?} after {took:?} (expected 130 at once)"
        ));
    }

    // Nothing was lost: the job lands once the store is back.
    s3.set(ProxyMode::Forward);
    let mut third = shells.worker(&[]);
    if !eventually(Duration::from_secs(60), async || {
        bucket.keys().await.len() == 1
    })
    .await
    {
        problems.push(format!(
            "after the store came back: {:?}",
            bucket.keys().await
        ));
    }
    problems.extend(judge_records(&bucket, &sent.records).await);
    problems.extend(stop_shells(&mut producer, &mut third));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}
