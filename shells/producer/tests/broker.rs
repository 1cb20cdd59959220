//! The real `cloudimg-producer` binary behind a test-owned proxy to RabbitMQ that speaks AMQP
//! frames: a `connection.blocked` (a memory or disk alarm, injected at the proxy, never by
//! changing the shared broker's watermarks) is answered with UNAVAILABLE at once and health
//! NOT_SERVING until `connection.unblocked`; a broker that never confirms is answered with
//! UNAVAILABLE after `CLOUDIMG_CONFIRM_TIMEOUT`, and the staged upload of that job, which the
//! broker does hold, is kept.

use std::time::Duration;

use cloudimg_test_support::producer::*;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Far above every bound the test configures: only a hung producer reaches it.
const HUNG: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_broker_and_a_missing_confirm_are_answered_unavailable_within_bounds() {
    let Some(connection) = broker().await else {
        return;
    };
    let Some(proxy) = FrameProxy::start().await else {
        return;
    };
    let producer = Producer::start(
        "blocked",
        &proxy.url(),
        &[
            ("CLOUDIMG_CONFIRM_TIMEOUT", "2s"),
            // Every upload is staged, so the test sees what happens to the staged bytes.
            ("CLOUDIMG_STAGE_OVER_BYTES", "1000"),
        ],
    );
    let channel = producer.connect().await;
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let image = photo(64, 48);
    assert!(image.len() > 1000);
    let first = upload(&channel, &image)
        .await
        .expect("an upload lands through the proxy");

    // A resource alarm: the broker blocks the producer's connection.
    assert_eq!(proxy.inject(&connection_blocked("low on memory")), 1);
    producer
        .wait_health(&channel, ServingStatus::NotServing)
        .await;
    let while_blocked = tokio::time::timeout(HUNG, upload(&channel, &image))
        .await
        .expect("a blocked broker is answered, not waited for");
    let blocked_health = producer.health(&channel).await;
    assert_eq!(proxy.inject(&connection_unblocked()), 1);
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let second = upload(&channel, &image)
        .await
        .expect("uploads land once unblocked");

    // The broker takes the next job but its confirm never comes back.
    proxy.hold_replies(true);
    let unconfirmed = tokio::time::timeout(HUNG, upload(&channel, &image))
        .await
        .expect("a missing confirm is answered after CLOUDIMG_CONFIRM_TIMEOUT");
    let log = producer.log_text();
    proxy.hold_replies(false);
    drop(proxy);

    let staged: Vec<String> = std::fs::read_dir(producer.dir.join("store/staging"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;

    let status = while_blocked.expect_err("no upload is accepted while the broker is blocked");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("blocked"), "{status:?}");
    assert_eq!(blocked_health, Some(ServingStatus::NotServing));
    let status = unconfirmed.expect_err("an unconfirmed job is never OK");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("CLOUDIMG_CONFIRM_TIMEOUT"),
        "{status:?}"
    );
    // The broker holds the unconfirmed job, and its staged bytes are still there for it.
    on_queue.sort();
    let mut expected_staged = on_queue.clone();
    expected_staged.sort();
    assert_eq!(
        on_queue.len(),
        3,
        "two accepted jobs and the unconfirmed one: {on_queue:?}\n{log}"
    );
    assert!(on_queue.contains(&first.job_id) && on_queue.contains(&second.job_id));
    let unconfirmed_id = on_queue
        .iter()
        .find(|id| **id != first.job_id && **id != second.job_id)
        .unwrap();
    assert!(
        status.message().contains(unconfirmed_id.as_str()),
        "the answer names the job that may still run: {status:?}"
    );
    let mut staged = staged;
    staged.sort();
    assert_eq!(
        staged, expected_staged,
        "every queued job keeps its staged upload"
    );
}

/// The shells' one confirmed publish (the producer's jobs, the worker's dead letters) reads a
/// message the broker returned as unroutable as a failure, definite (nothing to keep for it),
/// never as delivered.
#[tokio::test]
async fn the_confirmed_publish_reads_a_returned_message_as_a_definite_failure() {
    use cloudimg_runtime::amqp::{DEFAULT_CONFIRM_TIMEOUT, PublishError, publish_confirmed};
    let Some(connection) = broker().await else {
        return;
    };
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = unique_name("confirmed");
    let properties = lapin::BasicProperties::default;
    let returned = publish_confirmed(
        &channel,
        &queue,
        b"job",
        properties(),
        DEFAULT_CONFIRM_TIMEOUT,
    )
    .await;
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let routed = publish_confirmed(
        &channel,
        &queue,
        b"job",
        properties(),
        DEFAULT_CONFIRM_TIMEOUT,
    )
    .await;
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    assert!(
        matches!(&returned, Err(e @ PublishError::Unroutable(q)) if *q == queue && !e.broker_may_hold()),
        "{returned:?}"
    );
    routed.expect("a routed message is confirmed");
}
