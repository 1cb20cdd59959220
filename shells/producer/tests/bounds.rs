//! The real `cloudimg-producer` binary under clients that hold it open: uploads that stall or
//! drip are ended by their deadlines (DEADLINE_EXCEEDED, stream closed), a connection opens at
//! most `CLOUDIMG_MAX_STREAMS` streams at once, and good uploads keep landing meanwhile.

mod support;

use std::time::Duration;

use support::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Far above every deadline the tests configure: only a hung producer reaches it.
const HUNG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_dripping_uploads_end_at_their_deadlines_while_good_ones_land() {
    let Some(connection) = broker().await else {
        return;
    };
    let producer = Producer::start(
        "deadlines",
        &amqp_url(),
        &[
            ("CLOUDIMG_UPLOAD_IDLE_TIMEOUT", "4s"),
            ("CLOUDIMG_UPLOAD_TIMEOUT", "10s"),
            ("CLOUDIMG_MAX_STREAMS", "2"),
        ],
    );
    let good = photo(64, 48);

    // Connection A: two stalled uploads fill its two streams (one sent only its metadata, the
    // other its metadata and the first bytes); a third upload on A must wait for a free stream.
    let a = producer.connect().await;
    producer.wait_health(&a, ServingStatus::Serving).await;
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
