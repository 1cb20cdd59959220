//! Store errors by who must act, over the real producer and worker binaries and moto behind a
//! test-owned S3 gate (it enforces S3's 2 KB metadata limit, which moto does not, and answers the
//! refusals a test sets):
//! * a file name whose percent-encoding is past the metadata limit still lands (cut to fit);
//! * an object S3 refuses for good fails its job after a few tries with kind `store` (dead letter,
//!   marker, `GetJob`), while good images land;
//! * a store that denies the worker itself pauses it (`cloudimg_worker_ready` 0, jobs back in the
//!   queue, nothing dead-lettered) until access returns, then everything lands.

use std::time::Duration;

use cloudimg_runtime::amqp::header_str;
use cloudimg_runtime::jobs::{FailureMarker, percent_decode};
use cloudimg_runtime::proto::{GetJobRequest, JobState};
use cloudimg_test_support::*;
use lapin::options::BasicGetOptions;

struct Rig {
    bucket: Bucket,
    gate: S3Gate,
    shells: Shells,
    connection: lapin::Connection,
}

async fn rig(what: &str) -> Option<Rig> {
    let endpoint = s3_endpoint()?;
    let connection = broker().await?;
    let bucket = Bucket::create(&endpoint).await;
    let gate = S3Gate::start(&endpoint).await;
    let shells = Shells::new(
        amqp_url(),
        &unique_queue(what),
        StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint: gate.endpoint.clone(),
        },
    );
    Some(Rig {
        bucket,
        gate,
        shells,
        connection,
    })
}

async fn wait_for_key(bucket: &Bucket, key: &str, timeout: Duration) -> bool {
    eventually(timeout, async || bucket.get(key).await.is_some()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_are_cut_to_fit_and_objects_s3_refuses_are_dead_lettered_as_store() {
    let Some(rig) = rig("refused").await else {
        return;
    };
    rig.gate.refuse(S3Refusal {
        method: "PUT",
        path_part: "/gray/".into(),
        header_part: "refuse-me".into(),
        status: 400,
        code: "InvalidArgument",
    });
    let (mut producer, address) = rig.shells.producer(&[]);
    let mut worker = rig.shells.worker(&[]);
    let mut problems = Vec::new();

    // 3,000 characters of é: 18,000 bytes percent-encoded, nine times S3's metadata limit.
    let long_name = format!("{}.jpg", "é".repeat(3000));
    let (long_source, good_source) = (
        fixture_jpeg(200, 150, 1, 30, 90),
        fixture_jpeg(200, 150, 3, 30, 90),
    );
    let long = upload_raw(&address, &long_name, long_source.clone())
        .await
        .expect("the producer accepts a long name");
    let refused = upload_raw(&address, "refuse-me.jpg", fixture_jpeg(200, 150, 2, 30, 90))
        .await
        .expect("accepted");
    let good = upload_raw(&address, "good.jpg", good_source.clone())
        .await
        .expect("accepted");

    for (what, key, source) in [
        ("long name", &long.key, &long_source),
        ("good", &good.key, &good_source),
    ] {
        if !wait_for_key(&rig.bucket, key, Duration::from_secs(60)).await {
            problems.push(format!("the {what} upload's result {key} never landed"));
        } else if let Err(e) = judge(
            source,
            1,
            &rig.bucket.get(key).await.unwrap(),
            FIXTURE_MIN_DB,
        ) {
            problems.push(format!("the {what} upload's result {key}: {e}"));
        }
    }
    let head = rig
        .bucket
        .client
        .head_object()
        .bucket(&rig.bucket.name)
        .key(&long.key)
        .send()
        .await;
    match head {
        Err(e) => problems.push(format!("HeadObject {}: {e}", long.key)),
        Ok(head) => {
            let name = head
                .metadata()
                .and_then(|m| m.get("source-name"))
                .cloned()
                .unwrap_or_default();
            let decoded = percent_decode(&name);
            if name.len() > 1024 || !decoded.starts_with("éé") || !decoded.ends_with('…') {
                problems.push(format!(
                    "source-name of the long name is {} bytes: {decoded:.40}…",
                    name.len()
                ));
            }
        }
    }

    let marker_key = format!("failed/{}.json", refused.job_id);
    if wait_for_key(&rig.bucket, &marker_key, Duration::from_secs(60)).await {
        let marker: FailureMarker =
            serde_json::from_slice(&rig.bucket.get(&marker_key).await.unwrap()).unwrap();
        if marker.kind != "store" || !marker.error.contains("InvalidArgument") {
            problems.push(format!("marker of the refused object: {marker:?}"));
        }
    } else {
        problems.push("the object S3 refuses was never marked failed".into());
    }
    // The marker is written before the dead letter is published: wait for the message too.
    let channel = rig.connection.create_channel().await.unwrap();
    let dead_queue = format!("{}.dead", rig.shells.queue);
    let mut dead = None;
    eventually(Duration::from_secs(10), async || {
        dead = channel
            .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        dead.is_some()
    })
    .await;
    match dead {
        Some(message) => {
            let headers = message.properties.headers();
            let kind = header_str(headers.as_ref(), "x-cloudimg-error-kind");
            let id = header_str(headers.as_ref(), "x-cloudimg-job-id");
            if kind.as_deref() != Some("store") || id.as_deref() != Some(refused.job_id.as_str()) {
                problems.push(format!("dead letter kind {kind:?} for job {id:?}"));
            }
        }
        None => problems.push("nothing in the dead-letter queue".into()),
    }
    // A few tries, not a loop: three refusals of the one object.
    let refusals = rig.gate.refused();
    if !(3..=4).contains(&refusals) {
        problems.push(format!("the gate refused {refusals} requests, expected 3"));
    }
    let mut client = cloudimg_runtime::proto::image_service_client::ImageServiceClient::connect(
        format!("http://{address}"),
    )
    .await
    .unwrap();
    let state = client
        .get_job(GetJobRequest {
            job_id: refused.job_id.clone(),
            key: refused.key.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    if state.state() != JobState::Failed {
        problems.push(format!("GetJob of the refused job answers {state:?}"));
    }

    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&rig.connection, &rig.shells.queue).await;
    rig.bucket.delete().await;
    rig.shells.assert_no_problems(&problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_denies_the_worker_pauses_it_and_nothing_is_dead_lettered() {
    let Some(rig) = rig("denied").await else {
        return;
    };
    rig.gate.refuse(S3Refusal {
        method: "PUT",
        path_part: "/gray/".into(),
        header_part: String::new(),
        status: 403,
        code: "AccessDenied",
    });
    let metrics_port = free_port();
    let (mut producer, address) = rig.shells.producer(&[]);
    let mut worker = rig.shells.worker(&[(
        "CLOUDIMG_METRICS_LISTEN",
        &format!("127.0.0.1:{metrics_port}"),
    )]);
    let mut problems = Vec::new();
    let mut keys = Vec::new();
    for i in 0..4 {
        let reply = upload_raw(
            &address,
            &format!("photo-{i}.jpg"),
            fixture_jpeg(200, 150, 10 + i, 30, 90),
        )
        .await
        .expect("accepted");
        keys.push(reply.key);
    }
    // The reason is logged first: only then can "not ready and not connected" mean paused (a
    // worker that has not connected yet reports the same gauges).
    let logged = eventually(Duration::from_secs(30), async || {
        worker.log_text().contains("the store refuses this worker")
    })
    .await;
    if !logged {
        problems.push("the worker did not log why it stopped taking jobs".into());
    }
    let paused = eventually(Duration::from_secs(30), async || {
        let text = tokio::task::spawn_blocking(move || scrape(metrics_port))
            .await
            .unwrap();
        metric(&text, "cloudimg_worker_ready") == Some(0.0)
            && metric(&text, "cloudimg_broker_connected") == Some(0.0)
    })
    .await;
    if !paused {
        problems.push("the worker did not report itself not ready".into());
    }
    // Paused: every job back in the work queue, none dead-lettered.
    let queued = eventually(Duration::from_secs(10), async || {
        message_count(&rig.connection, &rig.shells.queue).await == 4
    })
    .await;
    if !queued {
        problems.push(format!(
            "{} of 4 jobs in the queue while paused",
            message_count(&rig.connection, &rig.shells.queue).await
        ));
    }
    let dead = message_count(&rig.connection, &format!("{}.dead", rig.shells.queue)).await;
    if dead != 0 {
        problems.push(format!("{dead} jobs dead-lettered for an access denial"));
    }

    // Access restored: the worker resumes by itself and everything lands.
    rig.gate.clear();
    for key in &keys {
        if !wait_for_key(&rig.bucket, key, Duration::from_secs(90)).await {
            problems.push(format!("{key} never landed after access returned"));
        }
    }
    let text = tokio::task::spawn_blocking(move || scrape(metrics_port))
        .await
        .unwrap();
    if metric(&text, "cloudimg_worker_ready") != Some(1.0) {
        problems.push("the worker is not ready again".into());
    }

    problems.extend(stop_shells(&mut producer, &mut worker));
    delete_queues(&rig.connection, &rig.shells.queue).await;
    rig.bucket.delete().await;
    rig.shells.assert_no_problems(&problems);
}
