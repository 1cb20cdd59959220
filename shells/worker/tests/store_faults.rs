//! Store faults: the S3 endpoint stops answering (stall) or refuses every connection for several
//! seconds, through a test-owned TCP proxy in front of moto (moto itself is never touched). The
//! worker holds its jobs and retries with backoff; nothing is dead-lettered for a transient error,
//! and everything lands once the store is back. `cloudimg send --wait` rides it out too (its
//! `GetJob` polls get UNAVAILABLE meanwhile and keep polling).

use std::ffi::OsString;
use std::time::{Duration, Instant};

use cloudimg_test_support::*;

const OUTAGE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_retries_through_a_stalled_or_refusing_store_and_dead_letters_nothing() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let upstream = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = Proxy::start(&upstream).await;
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
    let metrics_port = free_port();
    // Small uploads travel inline (the threshold set high here, over the 64 KiB default): the
    // producer accepts them without the store, so only the worker meets the outage.
    let (mut producer, address) = shells.producer(&[("CLOUDIMG_STAGE_OVER_BYTES", "15728640")]);
    let mut worker = shells.worker(&[(
        "CLOUDIMG_METRICS_LISTEN",
        &format!("127.0.0.1:{metrics_port}"),
    )]);
    let dir = TempDir::new("store-images");
    let mut problems = Vec::new();
    let mut timings = Vec::new();

    for (round, mode) in [ProxyMode::Refuse, ProxyMode::Stall]
        .into_iter()
        .enumerate()
    {
        let files: Vec<OsString> = (0..8)
            .map(|i| {
                let path = dir.0.join(format!("r{round}-{i}.jpg"));
                std::fs::write(
                    &path,
                    fixture_jpeg(320, 240, (round * 10 + i) as u64, 40, 90),
                )
                .unwrap();
                path.into_os_string()
            })
            .collect();
        proxy.set(mode);
        let outage_started = Instant::now();
        let mut args: Vec<OsString> = ["--wait", "--timeout", "120"]
            .iter()
            .map(OsString::from)
            .collect();
        args.extend(files.iter().cloned());
        let waiting = tokio::spawn({
            let address = address.clone();
            async move { send_async(&address, args).await }
        });
        tokio::time::sleep(OUTAGE).await;
        // While the store is out, nothing has landed and nothing was given up on.
        let metrics = scrape(metrics_port);
        let dead =
            metric(&metrics, "cloudimg_jobs_total{outcome=\"dead_lettered\"}").unwrap_or(0.0);
        let held = metric(&metrics, "cloudimg_jobs_in_flight").unwrap_or(0.0);
        if dead != 0.0 || held < 1.0 {
            problems.push(format!(
                "{mode:?}: during the outage {dead} dead-lettered, {held} held"
            ));
        }
        proxy.set(ProxyMode::Forward);
        let back = Instant::now();
        let sent = waiting.await.unwrap();
        let landed_after = back.elapsed();
        if sent.code != Some(0) || sent.records.iter().any(|r| r["status"] != "done") {
            problems.push(format!("{mode:?}: {:?}", sent.records));
        }
        timings.push(format!(
            "{mode:?} for {:.1}s: all {} done {:.1}s after the store came back",
            back.duration_since(outage_started).as_secs_f64(),
            sent.records.len(),
            landed_after.as_secs_f64()
        ));
    }

    let metrics = scrape(metrics_port);
    let store_errors = metric(&metrics, "cloudimg_store_errors_total").unwrap_or(0.0);
    let done = metric(&metrics, "cloudimg_jobs_total{outcome=\"done\"}").unwrap_or(0.0);
    if store_errors < 1.0 {
        problems.push("no store error was counted: the outage was never seen".into());
    }
    if done != 16.0 {
        problems.push(format!("{done} jobs done, expected 16"));
    }
    let keys = bucket.keys().await;
    if keys.len() != 16 || keys.iter().any(|k| !k.starts_with("gray/")) {
        problems.push(format!("bucket holds {keys:?}"));
    }
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    if dead != 0 {
        problems.push(format!("{dead} dead-lettered"));
    }
    eprintln!(
        "store faults: {}; {store_errors} store errors retried",
        timings.join("; ")
    );
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    shells.assert_no_problems(&problems);
}
