//! Operations: the Prometheus endpoints of the real producer and worker (`CLOUDIMG_METRICS_LISTEN`)
//! serve every metric the README lists, with its labels, counting what a small mixed run did:
//! uploads by outcome, bytes, staging, stage latency histograms, queue lag, jobs by outcome, error
//! kinds, the broker link. The producer's JSON log names each accepted job.

use std::ffi::OsString;
use std::time::Duration;

use cloudimg_test_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_count_a_mixed_run_by_outcome_stage_and_kind() {
    let Some(connection) = broker().await else {
        return;
    };
    let queue = unique_queue("ops");
    let store = TempDir::new("ops-store");
    let shells = Shells::new(amqp_url(), &queue, StoreEnv::Dir(store.0.clone()));
    let (pm, wm) = (free_port(), free_port());
    let (mut producer, address) = shells.producer(&[
        ("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{pm}")),
        ("CLOUDIMG_STAGE_OVER_BYTES", "20000"),
        ("CLOUDIMG_LOG_FORMAT", "json"),
    ]);
    let mut worker = shells.worker(&[("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{wm}"))]);

    // Two small images, one staged (over 20000 bytes), one the worker refuses (its header is
    // fine, its data truncated), one the producer refuses (not an image).
    let dir = TempDir::new("ops-images");
    let write = |name: &str, data: Vec<u8>| {
        let path = dir.0.join(name);
        std::fs::write(&path, data).unwrap();
        path.into_os_string()
    };
    let large = fixture_jpeg(400, 300, 3, 255, 95);
    assert!(large.len() > 20_000);
    let mut truncated = fixture_jpeg(120, 90, 4, 20, 90);
    assert!(truncated.len() < 20_000);
    truncated.truncate(truncated.len() * 2 / 3);
    let mut args: Vec<OsString> = vec!["--wait".into(), "--timeout".into(), "60".into()];
    args.push(write("a.jpg", fixture_jpeg(64, 48, 1, 20, 90)));
    args.push(write("b.jpg", fixture_jpeg(48, 64, 2, 20, 90)));
    args.push(write("large.jpg", large));
    args.push(write("truncated.jpg", truncated));
    args.push(write("not-an-image.jpg", b"GIF89a not really".to_vec()));
    let sent = send_async(&address, args).await;
    assert_eq!(sent.code, Some(1), "{sent:?}");

    let w = settled_worker_metrics(wm, 4.0, Duration::from_secs(20)).await;
    let p = scrape(pm);
    // The byte counters against the files themselves: the four accepted uploads (each fetched
    // whole by the worker, the truncated one too) and the three results in the store.
    let size = |path: &std::path::Path| std::fs::metadata(path).unwrap().len() as f64;
    let accepted_bytes: f64 = ["a.jpg", "b.jpg", "large.jpg", "truncated.jpg"]
        .iter()
        .map(|name| size(&dir.0.join(name)))
        .sum();
    let done: Vec<&str> = sent
        .records
        .iter()
        .filter(|r| r["status"] == "done")
        .filter_map(|r| r["key"].as_str())
        .collect();
    let output_bytes: f64 = done.iter().map(|key| size(&store.0.join(key))).sum();
    let mut problems = Vec::new();
    if done.len() != 3 {
        problems.push(format!("{} results, expected 3: {sent:?}", done.len()));
    }
    let mut expect = |text: &str, who: &str, series: &str, check: &dyn Fn(f64) -> bool| {
        let value = metric(text, series);
        if !value.is_some_and(check) {
            problems.push(format!("{who} {series} = {value:?}"));
        }
    };
    let eq = |n: f64| move |v: f64| v == n;
    // Producer.
    expect(
        &p,
        "producer",
        "cloudimg_uploads_total{outcome=\"accepted\"}",
        &eq(4.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_uploads_total{outcome=\"invalid\"}",
        &eq(1.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_upload_bytes_total",
        &eq(accepted_bytes),
    );
    expect(&p, "producer", "cloudimg_uploads_staged_total", &eq(1.0));
    expect(&p, "producer", "cloudimg_upload_seconds_count", &eq(4.0));
    expect(
        &p,
        "producer",
        "cloudimg_stage_seconds_count{stage=\"receive\"}",
        &|v| v >= 4.0,
    );
    expect(
        &p,
        "producer",
        "cloudimg_stage_seconds_count{stage=\"staging\"}",
        &eq(1.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_stage_seconds_count{stage=\"publish\"}",
        &eq(4.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_stage_seconds_bucket{stage=\"publish\",le=\"+Inf\"}",
        &eq(4.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_get_job_total{state=\"done\"}",
        &eq(3.0),
    );
    expect(
        &p,
        "producer",
        "cloudimg_get_job_total{state=\"failed\"}",
        &eq(1.0),
    );
    expect(&p, "producer", "cloudimg_broker_connected", &eq(1.0));
    expect(&p, "producer", "cloudimg_broker_connects_total", &eq(1.0));
    // Worker.
    expect(
        &w,
        "worker",
        "cloudimg_jobs_total{outcome=\"done\"}",
        &eq(3.0),
    );
    expect(
        &w,
        "worker",
        "cloudimg_jobs_total{outcome=\"dead_lettered\"}",
        &eq(1.0),
    );
    expect(
        &w,
        "worker",
        "cloudimg_job_errors_total{kind=\"invalid\"}",
        &eq(1.0),
    );
    expect(
        &w,
        "worker",
        "cloudimg_input_bytes_total",
        &eq(accepted_bytes),
    );
    expect(
        &w,
        "worker",
        "cloudimg_output_bytes_total",
        &eq(output_bytes),
    );
    expect(&w, "worker", "cloudimg_job_seconds_count", &eq(3.0));
    expect(&w, "worker", "cloudimg_queue_lag_seconds_count", &eq(4.0));
    expect(
        &w,
        "worker",
        "cloudimg_stage_seconds_count{stage=\"fetch\"}",
        &eq(1.0),
    );
    expect(
        &w,
        "worker",
        "cloudimg_stage_seconds_count{stage=\"store\"}",
        &eq(3.0),
    );
    expect(
        &w,
        "worker",
        "cloudimg_stage_seconds_count{stage=\"entropy_decode\"}",
        &|v| v >= 3.0,
    );
    expect(&w, "worker", "cloudimg_jobs_in_flight", &eq(0.0));
    expect(&w, "worker", "cloudimg_broker_connected", &eq(1.0));
    expect(&w, "worker", "cloudimg_broker_connects_total", &eq(1.0));

    let pt = producer.terminate(Duration::from_secs(20));
    let wt = worker.terminate(Duration::from_secs(30));
    // The JSON log: one object per line; each accepted job is an event with its id.
    let log = producer.log_text();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let accepted = events
        .iter()
        .filter(|e| e["message"] == "job accepted" && e["job_id"].is_string())
        .count();
    if accepted != 4 {
        problems.push(format!("{accepted} `job accepted` JSON events, expected 4"));
    }
    delete_queues(&connection, &queue).await;
    assert!(
        problems.is_empty(),
        "{}\n--- producer\n{p}\n--- worker\n{w}",
        problems.join("\n")
    );
    assert!(pt.is_some_and(|s| s.success()) && wt.is_some_and(|s| s.success()));
}
