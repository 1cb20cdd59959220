//! The real `cloudimg-producer` binary under clients that hold it open: uploads that stall or
//! drip are ended by their deadlines (DEADLINE_EXCEEDED, stream closed), a connection opens at
//! most `CLOUDIMG_MAX_STREAMS` streams at once, and good uploads keep landing meanwhile.

use std::time::Duration;

use cloudimg_test_support::producer::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Far above every deadline the tests configure: only a hung producer reaches it.
const HUNG: Duration = Duration::from_secs(60);
/// The idle bound of the deadlines test.
const IDLE: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_dripping_uploads_end_at_their_deadlines_while_good_ones_land() {
    let Some(connection) = broker().await else {
        return;
    };
    let producer = Producer::start(
        "deadlines",
        &amqp_url(),
        &[
            (
                "CLOUDIMG_UPLOAD_IDLE_TIMEOUT",
                &format!("{}s", IDLE.as_secs()),
            ),
            ("CLOUDIMG_UPLOAD_TIMEOUT", "10s"),
            ("CLOUDIMG_MAX_STREAMS", "2"),
        ],
    );
    let good = photo(64, 48);

    // Connection A: two stalled uploads fill its two streams (one sent only its metadata, the
    // other its metadata and the first bytes); a third upload on A must wait for a free stream.
    let a = producer.connect().await;
    producer.wait_health(&a, ServingStatus::Serving).await;
    let opened = std::time::Instant::now();
    let (stalled_meta, meta_only) = open_upload(&a, vec![metadata(good.len())]);
    let (stalled_head, head_only) =
        open_upload(&a, vec![metadata(good.len()), chunk(&good[..100])]);
    tokio::time::sleep(Duration::from_millis(300)).await; // both streams are open
    let (queued, queued_call) = open_upload(&a, upload_of(&good, 64 << 10));
    drop(queued);

    // Connection B: a good upload lands while A's streams are held, and one that drips a byte
    // every 200 ms (never idle for long) is ended by the total deadline.
    let b = producer.connect().await;
    let landed = upload(&b, &good)
        .await
        .expect("a good upload lands beside stalled ones");
    assert!(
        !meta_only.is_finished() && !head_only.is_finished() && !queued_call.is_finished(),
        "connection A's uploads were answered before a good upload on B"
    );
    let padded = padded_jpeg(&good, 1 << 20);
    let (drip, drip_call) = open_upload(&b, vec![metadata(padded.len()), chunk(&padded[..100])]);
    let dripping = tokio::spawn(async move {
        for byte in padded[100..].chunks(1) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if drip.send(chunk(byte)).await.is_err() {
                return drip;
            }
        }
        panic!("the whole dripped upload was sent: no deadline ended it");
    });

    let mut problems = Vec::new();
    // Held, not refused early: just before the idle bound both stalled uploads are still open.
    tokio::time::sleep(
        (opened + IDLE - Duration::from_millis(500))
            .saturating_duration_since(std::time::Instant::now()),
    )
    .await;
    if meta_only.is_finished() || head_only.is_finished() {
        problems.push(format!(
            "a stalled upload was answered before the {IDLE:?} idle bound: metadata only {}, \
             first bytes {}",
            meta_only.is_finished(),
            head_only.is_finished()
        ));
    }
    for (what, call, tx) in [
        ("metadata only", meta_only, stalled_meta),
        ("first bytes only", head_only, stalled_head),
    ] {
        match answer(call, HUNG).await {
            Err(s)
                if s.code() == Code::DeadlineExceeded
                    && s.message().contains("CLOUDIMG_UPLOAD_IDLE_TIMEOUT") => {}
            other => problems.push(format!("stalled ({what}): {other:?}")),
        }
        // The producer closed the stream: the client's request body is dropped.
        if tokio::time::timeout(HUNG, tx.closed()).await.is_err() {
            problems.push(format!("stalled ({what}): the stream stayed open"));
        }
    }
    let queued_reply = answer(queued_call, HUNG).await;
    match &queued_reply {
        Ok(_) => {}
        Err(s) => problems.push(format!(
            "the upload queued behind the stalled streams: {s:?}"
        )),
    }
    match answer(drip_call, HUNG).await {
        Err(s)
            if s.code() == Code::DeadlineExceeded
                && s.message().contains("CLOUDIMG_UPLOAD_TIMEOUT") => {}
        other => problems.push(format!("dripping upload: {other:?}")),
    }
    let drip = tokio::time::timeout(HUNG, dripping)
        .await
        .expect("the dripping upload's stream is closed")
        .unwrap();
    drop(drip);

    let mut on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    on_queue.sort();
    let mut accepted = vec![landed.job_id, queued_reply.unwrap().job_id];
    accepted.sort();
    assert_eq!(
        on_queue, accepted,
        "exactly the two good uploads are queued"
    );
}

/// The peak resident memory the producer may reach in the budget test: its own ~50 MiB (tokio,
/// tonic, the AWS SDK, HTTP/2 buffers, the allocator's arenas; a test build's dependencies at
/// opt-level 0 hold more than optimised ones) plus the 16 MiB budget and room for HTTP/2's
/// receive windows. Measured (debug build, 2026-11-28): 55-58 MiB with the budget and optimised dependencies,
/// 71 MiB with the test profile's unoptimised network stack; 116 MiB (optimised) with a 1 GiB
/// budget, when all twelve uploads are held.
const BUDGET_TEST_PEAK_KIB: u64 = 84 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_hold_at_most_the_memory_budget_and_the_rest_are_refused() {
    let Some(connection) = broker().await else {
        return;
    };
    // 16 MiB for four uploads' bytes and their metadata, which counts too (a budget counts in
    // whole KiB: each metadata reservation is one): a fifth upload's metadata finds no room.
    const BUDGET: u64 = (16 << 20) + (4 << 10);
    let metrics = free_port();
    let producer = Producer::start(
        "budget",
        &amqp_url(),
        &[
            ("CLOUDIMG_MEMORY_BUDGET", &BUDGET.to_string()),
            ("CLOUDIMG_METRICS_LISTEN", &format!("127.0.0.1:{metrics}")),
        ],
    );
    let channel = producer.connect().await;
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let reserved = || metric(metrics, "cloudimg_upload_bytes_reserved").unwrap_or(0.0) as u64;

    // Twelve uploads each declare 12 MiB and stall after their first 4 MiB: the producer grows
    // each one's buffer with what arrives, until the budget is full; the rest are refused.
    let large = padded_jpeg(&photo(64, 48), 12 << 20);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    let mut over = Vec::new();
    for _ in 0..12 {
        let first: Vec<_> = std::iter::once(metadata(large.len()))
            .chain(large[..4 << 20].chunks(1 << 20).map(chunk))
            .collect();
        let (tx, call) = open_upload(&channel, first);
        // Settled: either refused, or its 4 MiB received and reserved.
        let settled = eventually(HUNG, || {
            let now = reserved();
            if now > BUDGET {
                over.push(now);
            }
            call.is_finished() || now >> 22 == held.len() as u64 + 1
        })
        .await;
        assert!(settled, "an upload neither held nor refused");
        if call.is_finished() {
            refused.push(answer(call, HUNG).await);
        } else {
            held.push((tx, call));
        }
    }
    let small = photo(64, 48);
    let while_full = upload(&channel, &small).await;
    let peak_while_full = reserved();

    // The clients give up (their streams end short of the declared size): the budget frees, and
    // a small good upload lands.
    let mut ended = Vec::new();
    for (tx, call) in held {
        drop(tx);
        ended.push(answer(call, HUNG).await.map(|_| ()).map_err(|s| s.code()));
    }
    let freed = eventually(HUNG, || reserved() == 0).await;
    let landed = upload(&channel, &small).await;
    let peak_kib = producer.peak_rss_kib();
    let on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;

    eprintln!(
        "held {} uploads ({} MiB reserved), refused {}; producer VmHWM {} MiB",
        ended.len(),
        peak_while_full >> 20,
        refused.len(),
        peak_kib >> 10
    );
    assert!(over.is_empty(), "reserved past the budget: {over:?}");
    assert_eq!(
        ended.len(),
        4,
        "the budget holds exactly four 4 MiB uploads"
    );
    assert!(
        ((16 << 20)..=BUDGET).contains(&peak_while_full),
        "{peak_while_full}"
    );
    for status in &refused {
        assert!(
            matches!(status, Err(s) if s.code() == Code::ResourceExhausted
                && s.message().contains("CLOUDIMG_MEMORY_BUDGET")),
            "{status:?}"
        );
    }
    assert_eq!(refused.len(), 8);
    assert!(
        matches!(&while_full, Err(s) if s.code() == Code::ResourceExhausted),
        "a small upload while the budget is full: {while_full:?}"
    );
    assert!(
        ended.iter().all(|e| *e == Err(Code::InvalidArgument)),
        "{ended:?}"
    );
    assert!(freed, "the budget was not released: {} bytes", reserved());
    let landed = landed.expect("a small upload lands once the budget frees");
    assert_eq!(on_queue, [landed.job_id]);
    assert!(
        peak_kib < BUDGET_TEST_PEAK_KIB,
        "producer peak RSS {peak_kib} KiB, documented bound {BUDGET_TEST_PEAK_KIB} KiB"
    );
}
