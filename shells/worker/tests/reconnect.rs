//! Fault: the broker connection drops under the real producer and worker binaries (a test-owned
//! TCP proxy between them and RabbitMQ is cut; the shared broker is never touched). Both must
//! reconnect by themselves, and a job sent after the cut must still end as a result.

use std::time::Duration;

use cloudimg_test_support::*;

/// `cloudimg send --json --wait` of one image; its one JSON line.
async fn send_and_wait(address: &str, image: &std::path::Path) -> serde_json::Value {
    let args = ["--wait", "--timeout", "60"].map(Into::into);
    let sent = send_async(address, [&args[..], &[image.into()]].concat()).await;
    assert_eq!(sent.records.len(), 1, "{sent:?}");
    sent.records[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_worker_reconnect_after_the_broker_link_drops() {
    let Some(connection) = broker().await else {
        return;
    };
    let Some(proxy) = broker_proxy().await else {
        return;
    };
    let queue = unique_queue("reconnect");
    let store = TempDir::new("reconnect");
    let shells = Shells::through_proxy(&proxy, &queue, &store);
    let (mut producer, address) = shells.producer(&[]);
    let mut worker = shells.worker(&[]);

    let images = TempDir::new("reconnect-images");
    let first = images.0.join("first.jpg");
    let second = images.0.join("second.jpg");
    std::fs::write(&first, fixture_jpeg(96, 64, 1, 20, 90)).unwrap();
    std::fs::write(&second, fixture_jpeg(64, 96, 2, 20, 90)).unwrap();

    let record = send_and_wait(&address, &first).await;
    assert_eq!(record["status"], "done", "{record}");

    let cut = proxy.cut();
    assert!(
        cut >= 2,
        "expected the producer's and the worker's links, cut {cut}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        producer.running() && worker.running(),
        "a shell died with its link"
    );

    let record = send_and_wait(&address, &second).await;
    assert_eq!(record["status"], "done", "after the cut: {record}");
    let key = record["key"].as_str().unwrap();
    assert!(store.0.join(key).is_file());

    let stopped = stop_shells(&mut producer, &mut worker);
    delete_queues(&connection, &queue).await;
    assert!(stopped.is_empty(), "{stopped:?}");
}
