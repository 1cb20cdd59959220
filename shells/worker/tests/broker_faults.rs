//! Broker faults under the real producer and worker binaries:
//!
//! * every broker connection dropped mid-run (`rabbitmqctl close_all_connections`): both
//!   reconnect by themselves with backoff, and every accepted image lands;
//! * the broker gone (a test-owned TCP proxy between the shells and RabbitMQ refuses everything;
//!   the shared broker is never stopped): uploads get UNAVAILABLE, never OK, and `cloudimg send`
//!   reports the failure and exits non-zero; service resumes when the proxy is back;
//! * a work queue that already exists with other arguments: one clear, actionable error line,
//!   retries meanwhile, and recovery once the operator deletes the queue.
//!
//! `close_all_connections` drops every connection on the broker, so the tests in this file take
//! turns.

use std::ffi::OsString;
use std::process::Command;
use std::time::{Duration, Instant};

use cloudimg_test_support::*;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Uploads `cloudimg send` keeps in flight in the close-all test.
const SEND_CONCURRENCY: usize = 4;

fn write_images(dir: &TempDir, prefix: &str, n: usize, size: (u16, u16)) -> Vec<OsString> {
    (0..n)
        .map(|i| {
            let path = dir.0.join(format!("{prefix}-{i:02}.jpg"));
            std::fs::write(
                &path,
                fixture_jpeg(size.0 + i as u16, size.1, i as u64, 60, 92),
            )
            .unwrap();
            path.into_os_string()
        })
        .collect()
}

fn args(flags: &[&str], files: &[OsString]) -> Vec<OsString> {
    flags
        .iter()
        .map(OsString::from)
        .chain(files.iter().cloned())
        .collect()
}

fn gauge(port: u16, name: &str) -> f64 {
    metric(&scrape(port), name).unwrap_or(-1.0)
}

/// ERROR lines in a log, for the report.
fn error_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ERROR")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_closed_mid_run_both_reconnect_and_every_accepted_image_lands() {
    let _turn = SERIAL.lock().await;
    if Command::new("rabbitmqctl").arg("help").output().is_err() {
        skip::<()>("rabbitmqctl is not installed here (it drops the broker's connections)");
        return;
    }
    let Some(connection) = broker().await else {
        return;
    };
    drop(connection);
    let queue = unique_queue("closeall");
    let store = TempDir::new("closeall-store");
    let shells = Shells::new(amqp_url(), &queue, StoreEnv::Dir(store.0.clone()));
    let (pm, wm) = (free_port(), free_port());
    let (mut producer, address) =
        shells.producer(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{pm}"))]);
    let mut worker = shells.worker(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{wm}"))]);
    let dir = TempDir::new("closeall-images");
    let files = write_images(&dir, "img", 60, (1600, 1200));
    let sending = tokio::spawn({
        let address = address.clone();
        let concurrency = SEND_CONCURRENCY.to_string();
        let args = args(&["--wait", "--timeout", "120", "-c", &concurrency], &files);
        async move { send_async(&address, args).await }
    });
    let gray = store.0.join("gray");
    let started = eventually(Duration::from_secs(60), async || {
        std::fs::read_dir(&gray).map_or(0, |d| d.count()) >= 5
    })
    .await;
    let out = Command::new("rabbitmqctl")
        .args(["close_all_connections", "cloudimg fault test"])
        .output()
        .unwrap();
    let closed_at = Instant::now();
    let done_at_close = std::fs::read_dir(&gray).map_or(0, |d| d.count());
    let sent = sending.await.unwrap();
    let finished = closed_at.elapsed();

    let mut problems = Vec::new();
    if !out.status.success() {
        problems.push(format!(
            "rabbitmqctl close_all_connections failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if !started || done_at_close >= files.len() {
        problems.push(format!(
            "the close did not come mid-run ({done_at_close} results when it returned): it proves nothing"
        ));
    }
    let mut refused = 0;
    for record in &sent.records {
        match (record["job_id"].as_str(), record["status"].as_str()) {
            (Some(_), Some("done")) => {
                let key = record["key"].as_str().unwrap();
                match std::fs::read(store.0.join(key)) {
                    Ok(data) => {
                        let source = std::fs::read(record["file"].as_str().unwrap()).unwrap();
                        if let Err(e) = judge(&source, 1, &data, FIXTURE_MIN_DB) {
                            problems.push(format!("{key}: {e}"));
                        }
                    }
                    Err(_) => problems.push(format!("{key} reported done but missing")),
                }
            }
            // Not accepted: the upload met the reconnect and was told so.
            (None, Some("failed"))
                if record["error"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("Unavailable")) =>
            {
                refused += 1
            }
            _ => problems.push(format!("{record}")),
        }
    }
    if sent.records.len() != files.len() {
        problems.push(format!(
            "{} records for {} files",
            sent.records.len(),
            files.len()
        ));
    }
    // Only the uploads in flight when the connections closed may be refused (their publish or
    // its confirm was on the closed connection): at most `-c 4` of them. Uploads that arrive
    // while the producer relinks wait for the link instead of failing.
    if refused > SEND_CONCURRENCY {
        problems.push(format!(
            "{refused} uploads refused after the close, more than the {SEND_CONCURRENCY} in flight"
        ));
    }
    let (p_up, w_up) = (
        eventually(Duration::from_secs(20), async || {
            gauge(pm, "cloudimg_broker_connected") == 1.0
        })
        .await,
        eventually(Duration::from_secs(20), async || {
            gauge(wm, "cloudimg_broker_connected") == 1.0
        })
        .await,
    );
    let (p_links, w_links) = (
        gauge(pm, "cloudimg_broker_connects_total"),
        gauge(wm, "cloudimg_broker_connects_total"),
    );
    if !p_up || !w_up || p_links < 2.0 || w_links < 2.0 {
        problems.push(format!(
            "links after the close: producer up {p_up} ({p_links} connects), worker up {w_up} ({w_links} connects)"
        ));
    }
    if !producer.running() || !worker.running() {
        problems.push("a shell exited with its connection".into());
    }
    let connection = broker().await.unwrap();
    let dead = message_count(&connection, &format!("{queue}.dead")).await;
    let queued = message_count(&connection, &queue).await;
    if dead != 0 || queued != 0 {
        problems.push(format!("{queued} queued, {dead} dead-lettered"));
    }
    eprintln!(
        "close_all_connections mid-run ({done_at_close} results written when it returned): {} of {} \
         accepted and done, {refused} refused UNAVAILABLE during the reconnect; the run finished \
         {:.1}s after the close",
        sent.records.len() - refused,
        files.len(),
        finished.as_secs_f64()
    );
    // A forced close is routine: the shells say so at WARN and reconnect; nothing logs ERROR
    // (lapin's own ERROR lines for it are off by default).
    for service in [&producer, &worker] {
        let log = service.log_text();
        let errors = error_lines(&log);
        if !errors.is_empty() {
            problems.push(format!("{} logged ERROR: {errors:?}", service.name));
        }
    }
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    shells.assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_gone_uploads_are_unavailable_never_ok_and_service_resumes() {
    let _turn = SERIAL.lock().await;
    let Some(connection) = broker().await else {
        return;
    };
    let Some(proxy) = broker_proxy().await else {
        return;
    };
    let queue = unique_queue("gone");
    let store = TempDir::new("gone-store");
    let shells = Shells::through_proxy(&proxy, &queue, &store);
    let (pm, wm) = (free_port(), free_port());
    let (mut producer, address) =
        shells.producer(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{pm}"))]);
    let mut worker = shells.worker(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{wm}"))]);
    let dir = TempDir::new("gone-images");
    let mut problems = Vec::new();

    let before = send_async(
        &address,
        args(
            &["--wait", "--timeout", "60"],
            &write_images(&dir, "before", 1, (200, 150)),
        ),
    )
    .await;
    if before.code != Some(0) {
        problems.push(format!("before the outage: {before:?}"));
    }

    proxy.set(ProxyMode::Refuse);
    let gone_at = Instant::now();
    let noticed = eventually(Duration::from_secs(10), async || {
        gauge(pm, "cloudimg_broker_connected") == 0.0
    })
    .await;
    let noticed_after = gone_at.elapsed();
    let during_files = write_images(&dir, "during", 6, (200, 150));
    let asked = Instant::now();
    let during = send_async(
        &address,
        args(&["--wait", "--timeout", "30"], &during_files),
    )
    .await;
    let answered_in = asked.elapsed();
    if !noticed {
        problems.push("the producer never noticed the broker was gone".into());
    }
    if during.code != Some(1) {
        problems.push(format!(
            "send exited {:?} with the broker gone",
            during.code
        ));
    }
    for record in &during.records {
        let unavailable = record["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("Unavailable"));
        if record["status"] != "failed" || !record["job_id"].is_null() || !unavailable {
            problems.push(format!("with the broker gone: {record}"));
        }
    }
    if during.records.len() != during_files.len() {
        problems.push(format!(
            "{} records for {} files",
            during.records.len(),
            during_files.len()
        ));
    }
    if !producer.running() || !worker.running() {
        problems.push("a shell exited while the broker was gone".into());
    }

    proxy.set(ProxyMode::Forward);
    let back_at = Instant::now();
    let p_up = eventually(Duration::from_secs(30), async || {
        gauge(pm, "cloudimg_broker_connected") == 1.0
    })
    .await;
    let w_up = eventually(Duration::from_secs(30), async || {
        gauge(wm, "cloudimg_broker_connected") == 1.0
    })
    .await;
    let relinked = back_at.elapsed();
    if !p_up || !w_up {
        problems.push(format!(
            "after the proxy came back: producer up {p_up}, worker up {w_up}"
        ));
    }
    let after = send_async(
        &address,
        args(
            &["--wait", "--timeout", "60"],
            &write_images(&dir, "after", 3, (200, 150)),
        ),
    )
    .await;
    if after.code != Some(0) || after.records.iter().any(|r| r["status"] != "done") {
        problems.push(format!("after the outage: {after:?}"));
    }
    // Only the accepted images have results, each its own source's picture: none of the refused
    // ones was queued after all.
    for record in before.records.iter().chain(&after.records) {
        let key = record["key"].as_str().unwrap_or_default();
        let data = std::fs::read(store.0.join(key)).unwrap_or_default();
        let source = std::fs::read(record["file"].as_str().unwrap()).unwrap();
        if let Err(e) = judge(&source, 1, &data, FIXTURE_MIN_DB) {
            problems.push(format!("{key}: {e}"));
        }
    }
    let results = std::fs::read_dir(store.0.join("gray")).map_or(0, |d| d.count());
    if results != 4 {
        problems.push(format!(
            "{results} results, expected 4 (1 before + 3 after)"
        ));
    }
    let queued = message_count(&connection, &queue).await;
    if queued != 0 {
        problems.push(format!("{queued} messages queued"));
    }
    eprintln!(
        "broker gone: producer noticed in {:.1}s; {} uploads refused UNAVAILABLE in {:.1}s (client exit {:?}); both relinked {:.1}s after the proxy came back",
        noticed_after.as_secs_f64(),
        during.records.len(),
        answered_in.as_secs_f64(),
        during.code,
        relinked.as_secs_f64()
    );
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    shells.assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_declared_with_other_arguments_is_one_clear_error_then_recovers() {
    let _turn = SERIAL.lock().await;
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("mismatch");
    // Someone declared the work queue by hand: durable, no dead-letter route.
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let store = TempDir::new("mismatch-store");
    let shells = Shells::new(amqp_url(), &queue, StoreEnv::Dir(store.0.clone()));
    let pm = free_port();
    let (mut producer, address) =
        shells.producer(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{pm}"))]);
    let mut worker = shells.worker(&[]);
    // Several retries happen in this time (backoff from 0.2 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut problems = Vec::new();
    let needle = "already exists on the broker with other arguments";
    for service in [&producer, &worker] {
        let log = service.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
        if lines.len() != 1 || !lines[0].contains("ERROR") || !lines[0].contains("delete_queue") {
            problems.push(format!(
                "{}: expected one actionable ERROR line, found {lines:?}",
                service.name
            ));
        }
    }
    if !producer.running() || !worker.running() {
        problems.push("a shell exited on the mismatch".into());
    }
    // The operator deletes the queue: both declare it properly and work.
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let fixed = Instant::now();
    if !eventually(Duration::from_secs(30), async || {
        gauge(pm, "cloudimg_broker_connected") == 1.0
    })
    .await
    {
        problems.push("the producer did not link after the queue was deleted".into());
    }
    let dir = TempDir::new("mismatch-images");
    let sent = send_async(
        &address,
        args(
            &["--wait", "--timeout", "60"],
            &write_images(&dir, "img", 1, (64, 48)),
        ),
    )
    .await;
    if sent.code != Some(0) {
        problems.push(format!("after the fix: {sent:?}"));
    }
    eprintln!(
        "queue mismatch: recovered {:.1}s after the queue was deleted",
        fixed.elapsed().as_secs_f64()
    );
    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&connection, &queue).await;
    shells.assert_no_problems(&problems);
}
