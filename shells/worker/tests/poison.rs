//! Poison input: every file in the corpus's `bad/` folder (352 corrupt, truncated, hostile or
//! merely odd images), sent through the real client, producer and worker on RabbitMQ and the S3
//! endpoint, ends in exactly one place:
//!
//! * a correct result in the bucket (only for files the manifest marks `ok` or `either`),
//! * a refusal from the producer (`status: failed` without a job id: the header already showed
//!   it is bad), or
//! * the dead-letter queue `<queue>.dead`, with `x-cloudimg-job-id`, `x-cloudimg-error` and
//!   `x-cloudimg-error-kind`, and a `failed/<job_id>.json` marker in the bucket.
//!
//! Good images sent between them all land, no process exits, `cloudimg send --wait` reports the
//! right status for every file, and the metrics count the same outcomes.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::time::{Duration, Instant};

use cloudimg_runtime::amqp::header_str;
use cloudimg_runtime::jobs::FailureMarker;
use cloudimg_test_support::*;
use lapin::options::BasicGetOptions;

/// Where one file ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Place {
    Result,
    Refused,
    DeadLettered,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_file_ends_in_exactly_one_place_and_good_ones_between_them_land() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let Some(connection) = broker().await else {
        return;
    };
    let Some(corpus) = corpus() else { return };
    let bad: Vec<ManifestRow> = manifest(&corpus)
        .into_iter()
        .filter(|r| r.path.starts_with("bad/"))
        .collect();
    assert!(
        bad.len() >= 300,
        "only {} bad files in the manifest",
        bad.len()
    );
    let bucket = Bucket::create(&endpoint).await;
    let queue = unique_queue("poison");
    let shells = Shells::on_s3(&queue, &bucket, &endpoint);
    let (producer_metrics, worker_metrics) = (free_port(), free_port());
    let (mut producer, address) = shells.producer(&[(
        "CLOUDIMG_METRICS_LISTEN",
        &format!("127.0.0.1:{producer_metrics}"),
    )]);
    let mut worker = shells.worker(&[(
        "CLOUDIMG_METRICS_LISTEN",
        &format!("127.0.0.1:{worker_metrics}"),
    )]);
    let (producer_pid, worker_pid) = (producer.pid(), worker.pid());

    // The bad files in manifest order, a good image made here after every 20th.
    let good_dir = TempDir::new("poison-good");
    let mut args: Vec<OsString> = ["--wait", "--timeout", "600", "-c", "8"]
        .iter()
        .map(OsString::from)
        .collect();
    let mut expect: BTreeMap<String, &ManifestRow> = BTreeMap::new();
    let mut good: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for (i, row) in bad.iter().enumerate() {
        let path = corpus.join(&row.path);
        expect.insert(path.display().to_string(), row);
        args.push(path.into_os_string());
        if i % 20 == 19 {
            let (w, h) = (64 + i as u16, 48 + (i as u16 % 7) * 10);
            let path = good_dir.0.join(format!("good-{i}.jpg"));
            std::fs::write(&path, fixture_jpeg(w, h, i as u64, 40, 90)).unwrap();
            good.insert(path.display().to_string(), (u32::from(w), u32::from(h)));
            args.push(path.into_os_string());
        }
    }
    let started = Instant::now();
    let sent = send_async(&address, args).await;
    let elapsed = started.elapsed();

    let mut problems = Vec::new();
    let by_file = sent.by_file();
    if by_file.len() != sent.records.len() {
        problems.push("a file was reported twice".to_owned());
    }
    let mut places: BTreeMap<String, Place> = BTreeMap::new();
    let mut results: BTreeMap<String, String> = BTreeMap::new(); // job id -> file
    let mut dead: BTreeMap<String, String> = BTreeMap::new(); // job id -> file
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for file in expect.keys().chain(good.keys()) {
        let Some(record) = by_file.get(file) else {
            problems.push(format!("{file}: no report"));
            continue;
        };
        let job_id = record["job_id"].as_str().map(str::to_owned);
        let error = record["error"].as_str().unwrap_or("").to_owned();
        let place = match (record["status"].as_str(), job_id) {
            (Some("done"), Some(id)) => {
                results.insert(id, file.clone());
                Place::Result
            }
            (Some("failed"), None) => {
                let code = error.split(':').next().unwrap_or("").to_owned();
                if !matches!(code.as_str(), "InvalidArgument" | "ResourceExhausted") {
                    problems.push(format!("{file}: refused with {error:?}"));
                }
                *refusals.entry(code).or_default() += 1;
                Place::Refused
            }
            (Some("failed"), Some(id)) => {
                dead.insert(id, file.clone());
                Place::DeadLettered
            }
            _ => {
                problems.push(format!("{file}: did not end: {record}"));
                continue;
            }
        };
        places.insert(file.clone(), place);
    }

    // Results: allowed only where the manifest allows them, and correct.
    for (job_id, file) in &results {
        let key = format!("gray/{job_id}.jpg");
        let Some(data) = bucket.get(&key).await else {
            problems.push(format!("{file}: reported done but {key} is missing"));
            continue;
        };
        let wanted = match (expect.get(file), good.get(file)) {
            (Some(row), _) => {
                if row.expect == "reject" {
                    problems.push(format!("{file}: marked reject, but converted"));
                }
                if row.width == 0 {
                    None
                } else {
                    Some(row.displayed())
                }
            }
            (None, Some(size)) => Some(*size),
            (None, None) => unreachable!(),
        };
        match ResultImage::decode(&data) {
            Ok(image) => {
                if !image.is_grayscale() || wanted.is_some_and(|w| w != image.displayed) {
                    problems.push(format!(
                        "{file}: result is {:?} displayed {:?}, expected L8 {wanted:?}",
                        image.format, image.displayed
                    ));
                }
            }
            Err(e) => problems.push(format!("{file}: result does not decode: {e}")),
        }
        // Its pixels are its own source's: the conformance bound for the `ok` files, the
        // fixtures' for the good images. (`either` files are held to their size, as in the
        // engine's conformance test: several are damaged where the reference decoder stops.)
        let bound = match expect.get(file) {
            Some(row) => row.min_db().map(|db| (row.orientation, db)),
            None => Some((1, FIXTURE_MIN_DB)),
        };
        if let Some((orientation, min_db)) = bound {
            let source = std::fs::read(file).unwrap();
            if let Err(e) = judge(&source, orientation, &data, min_db) {
                problems.push(format!("{file}: {e}"));
            }
        }
    }
    for file in good.keys() {
        if places.get(file) != Some(&Place::Result) {
            problems.push(format!(
                "good image {file} did not land: {:?}",
                by_file.get(file)
            ));
        }
    }
    for (file, row) in &expect {
        if row.expect == "ok" && places.get(file) != Some(&Place::Result) {
            problems.push(format!(
                "{file}: marked ok, ended as {:?}",
                places.get(file)
            ));
        }
    }

    // Dead letters: one message per dead-lettered job, with the contract's headers, and a marker.
    let dead_queue = format!("{queue}.dead");
    let deadline = Instant::now() + Duration::from_secs(30);
    while (message_count(&connection, &dead_queue).await as usize) < dead.len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let channel = connection.create_channel().await.unwrap();
    let mut dead_letters: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let mut internal = Vec::new();
    while let Some(message) = channel
        .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let headers = message.delivery.properties.headers().clone();
        let id = header_str(headers.as_ref(), "x-cloudimg-job-id").unwrap_or_default();
        let error = header_str(headers.as_ref(), "x-cloudimg-error");
        let kind = header_str(headers.as_ref(), "x-cloudimg-error-kind");
        if error.as_deref().is_none_or(str::is_empty) || kind.is_none() {
            problems.push(format!("dead letter {id:?} lacks x-cloudimg-error(-kind)"));
        }
        let kind = kind.unwrap_or_default();
        if kind == "internal" {
            internal.push(format!(
                "{}: {}",
                dead.get(&id).map_or("?", |f| f),
                error.unwrap_or_default()
            ));
        }
        *kinds.entry(kind).or_default() += 1;
        *dead_letters.entry(id).or_default() += 1;
    }
    for (id, count) in &dead_letters {
        if *count != 1 || !dead.contains_key(id) {
            problems.push(format!(
                "dead letter for job {id:?} {count} times (reported dead: {})",
                dead.contains_key(id)
            ));
        }
    }
    for (id, file) in &dead {
        if !dead_letters.contains_key(id) {
            problems.push(format!(
                "{file}: reported failed as job {id} but not in {dead_queue}"
            ));
        }
        match bucket.get(&format!("failed/{id}.json")).await {
            Some(marker) => match serde_json::from_slice::<FailureMarker>(&marker) {
                Ok(m) if m.job_id == *id && !m.error.is_empty() => {}
                other => problems.push(format!("{file}: bad failure marker {other:?}")),
            },
            None => problems.push(format!("{file}: no failed/{id}.json")),
        }
    }

    // The bucket holds exactly the results and the markers: nothing staged, nothing else. (At the
    // default threshold most of these files were staged; a dead-lettered job's staged upload is
    // deleted just after its dead letter is settled, so give the last ones a moment.)
    eventually(Duration::from_secs(10), async || {
        !bucket
            .keys()
            .await
            .iter()
            .any(|k| k.starts_with("staging/"))
    })
    .await;
    let mut wanted_keys: BTreeSet<String> =
        results.keys().map(|id| format!("gray/{id}.jpg")).collect();
    wanted_keys.extend(dead.keys().map(|id| format!("failed/{id}.json")));
    let keys: BTreeSet<String> = bucket.keys().await.into_iter().collect();
    for key in keys.symmetric_difference(&wanted_keys) {
        problems.push(format!(
            "bucket: {key} {}",
            if keys.contains(key) {
                "unexpected"
            } else {
                "missing"
            }
        ));
    }
    let queued = message_count(&connection, &queue).await;
    if queued != 0 {
        problems.push(format!("{queued} messages stuck on the work queue"));
    }
    let any_failed = places.values().any(|p| *p != Place::Result);
    if sent.code != Some(if any_failed { 1 } else { 0 }) {
        problems.push(format!("cloudimg send exited {:?}", sent.code));
    }

    // The processes never exited, and their metrics count the same outcomes.
    if !worker.running() || worker.pid() != worker_pid {
        problems.push("the worker exited".into());
    }
    if !producer.running() || producer.pid() != producer_pid {
        problems.push("the producer exited".into());
    }
    // The worker counts a job after its ack, after `send --wait` saw its result: read its
    // metrics once they have settled.
    let count = |p: Place| places.values().filter(|x| **x == p).count() as f64;
    let accepted = count(Place::Result) + count(Place::DeadLettered);
    let wm = settled_worker_metrics(worker_metrics, accepted, Duration::from_secs(20)).await;
    let pm = scrape(producer_metrics);
    let checks = [
        (
            "producer accepted",
            metric(&pm, "cloudimg_uploads_total{outcome=\"accepted\"}"),
            accepted,
        ),
        (
            "producer refused",
            Some(
                metric(&pm, "cloudimg_uploads_total").unwrap_or(0.0)
                    - metric(&pm, "cloudimg_uploads_total{outcome=\"accepted\"}").unwrap_or(0.0),
            ),
            count(Place::Refused),
        ),
        (
            "worker done",
            metric(&wm, "cloudimg_jobs_total{outcome=\"done\"}"),
            count(Place::Result),
        ),
        (
            "worker dead-lettered",
            metric(&wm, "cloudimg_jobs_total{outcome=\"dead_lettered\"}"),
            count(Place::DeadLettered),
        ),
        (
            "worker error kinds",
            metric(&wm, "cloudimg_job_errors_total"),
            count(Place::DeadLettered),
        ),
    ];
    for (what, got, want) in checks {
        if got.unwrap_or(0.0) != want {
            problems.push(format!("metrics: {what} = {got:?}, expected {want}"));
        }
    }
    problems.extend(stop_shells(&mut producer, &mut worker));

    let mut by_place: BTreeMap<(Place, String), usize> = BTreeMap::new();
    for (file, place) in &places {
        let expect = expect
            .get(file)
            .map_or("good", |r| r.expect.as_str())
            .to_owned();
        *by_place.entry((*place, expect)).or_default() += 1;
    }
    eprintln!(
        "poison sweep: {} files ({} bad, {} good) in {:.1}s; by place and manifest expectation: {by_place:?}; refusals by code: {refusals:?}; dead letters by kind: {kinds:?}",
        places.len(),
        expect.len(),
        good.len(),
        elapsed.as_secs_f64()
    );
    if !internal.is_empty() {
        eprintln!("engine internal errors (panics caught by the worker): {internal:#?}");
    }
    delete_queues(&connection, &queue).await;
    bucket.delete().await;
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        shells.all_logs().chars().take(20_000).collect::<String>()
    );
}
