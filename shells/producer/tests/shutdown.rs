//! SIGTERM to the real `cloudimg-producer` binary: it stops accepting connections at once, lets
//! the uploads in flight finish (published, confirmed and answered OK, or refused), and exits 0;
//! an upload that stalls cannot hold the drain past `CLOUDIMG_DRAIN_SECONDS`, and is never
//! answered OK.

use std::time::{Duration, Instant};

use cloudimg_test_support::producer::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// An upload of a small photo with only its first `head` bytes sent; the sender sends the rest.
fn start_upload(
    channel: &tonic::transport::Channel,
    data: &[u8],
    head: usize,
) -> (
    tokio::sync::mpsc::Sender<cloudimg_runtime::proto::UploadRequest>,
    tokio::task::JoinHandle<Result<cloudimg_runtime::proto::UploadReply, tonic::Status>>,
) {
    open_upload(channel, vec![metadata(data.len()), chunk(&data[..head])])
}

/// The drain bound of the stalled-upload test.
const DRAIN: Duration = Duration::from_secs(2);

fn start(drain_seconds: &str) -> Producer {
    start_with(drain_seconds, &[])
}

fn start_with(drain_seconds: &str, env: &[(&str, &str)]) -> Producer {
    let mut env = env.to_vec();
    env.push(("CLOUDIMG_DRAIN_SECONDS", drain_seconds));
    Producer::start("drain", &amqp_url(), &env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_the_upload_in_flight_to_ok() {
    let Some(connection) = broker().await else {
        return;
    };
    let mut producer = start("30");
    let channel = producer.connect().await;
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let data = photo(96, 64);
    let (tx, call) = start_upload(&channel, &data, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;

    producer.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // No new connections; the process is still there, holding the upload.
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", producer.port)).is_err(),
        "still accepting connections after SIGTERM"
    );
    assert!(
        producer.child.try_wait().unwrap().is_none(),
        "exited before the drain"
    );
    tx.send(chunk(&data[100..])).await.unwrap();
    drop(tx);
    let reply = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the upload in flight is answered")
        .unwrap()
        .expect("the upload in flight ends OK");
    let exit = producer.wait_exit(Duration::from_secs(10));
    let on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;
    let (status, took) = exit.expect("the producer exits after the drain");
    assert!(status.success(), "{status:?}");
    eprintln!("producer drained its upload and exited 0 {took:?} after it was answered");
    assert_eq!(
        on_queue,
        [reply.job_id],
        "the drained upload is on the queue"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_cannot_hold_the_drain_past_its_bound_and_is_never_ok() {
    let Some(connection) = broker().await else {
        return;
    };
    let metrics_port = free_port();
    let listen = format!("127.0.0.1:{metrics_port}");
    let mut producer = start_with(
        &DRAIN.as_secs().to_string(),
        &[("CLOUDIMG_METRICS_LISTEN", &listen)],
    );
    let channel = producer.connect().await;
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let data = photo(96, 64);
    let (tx, call) = start_upload(&channel, &data, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // In flight: the producer holds its bytes (the budget's gauge) and has not answered it.
    let held = metric(metrics_port, "cloudimg_upload_bytes_reserved");
    assert!(
        held.is_some_and(|b| b > 0.0) && !call.is_finished(),
        "the upload is not in flight before SIGTERM: {held:?} bytes held, answered {}",
        call.is_finished()
    );
    let asked = Instant::now();
    producer.sigterm();
    let signalled = asked.elapsed();
    let exit = producer.wait_exit(Duration::from_secs(10));
    let answer = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the stalled upload is answered")
        .unwrap();
    drop(tx);
    let on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;
    let (status, took) = exit.expect("the producer exits once the drain bound passes");
    assert!(status.success(), "{status:?}");
    // It waited for the upload as long as the bound (a drain that ignored the upload would exit
    // at once), and no longer.
    // (`took` counts from after the signal was sent, the drain from after `asked`.)
    let since_asked = signalled + took;
    assert!(
        since_asked >= DRAIN && took < DRAIN + Duration::from_secs(4),
        "exit {since_asked:?} after SIGTERM with a {DRAIN:?} bound"
    );
    assert!(answer.is_err(), "a cut upload was answered {answer:?}");
    assert!(on_queue.is_empty(), "a cut upload reached the queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_with_130_without_waiting_for_the_drain() {
    let Some(connection) = broker().await else {
        return;
    };
    let mut producer = start("30");
    let channel = producer.connect().await;
    producer.wait_health(&channel, ServingStatus::Serving).await;
    let data = photo(96, 64);
    let (tx, call) = start_upload(&channel, &data, 100);
    tokio::time::sleep(Duration::from_millis(300)).await;
    producer.sigterm();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let draining = producer.child.try_wait().unwrap().is_none();
    producer.sigterm();
    let exit = producer.wait_exit(Duration::from_secs(10));
    drop(tx);
    let answer = tokio::time::timeout(Duration::from_secs(10), call).await;
    let on_queue = producer.drain_queue(&connection).await;
    producer.cleanup(&connection).await;
    assert!(draining, "the first signal did not start a drain");
    let (status, took) = exit.expect("the second signal ends the process");
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        took < Duration::from_secs(3),
        "exit took {took:?}, not at once"
    );
    assert!(
        !matches!(answer, Ok(Ok(Ok(_)))),
        "the upload cut by the exit was answered OK: {answer:?}"
    );
    assert!(on_queue.is_empty(), "a cut upload reached the queue");
}
