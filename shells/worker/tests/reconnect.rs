//! Fault: the broker connection drops under the real producer and worker binaries (a test-owned
//! TCP proxy between them and RabbitMQ is cut; the shared broker is never touched). Both must
//! reconnect by themselves, and a job sent after the cut must still end as a result.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards loopback connections to RabbitMQ until cut.
struct Proxy {
    port: u16,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let links = links.clone();
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let link = tokio::spawn(async move {
                        if let Ok(mut broker) = TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            }
        });
        Proxy {
            port,
            links,
            accept,
        }
    }

    /// Drops every connection through the proxy (new ones are still accepted).
    fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        let live = links.iter().filter(|l| !l.is_finished()).count();
        for link in links {
            link.abort();
        }
        live
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

fn send_and_wait(address: &str, image: &std::path::Path) -> serde_json::Value {
    let output = Command::new(binary("cloudimg"))
        .args(["send", "--json", "--wait", "--timeout", "60"])
        .arg(image)
        .arg(address)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let line = String::from_utf8(output.stdout).unwrap();
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_worker_reconnect_after_the_broker_link_drops() {
    if amqp_url() != DEFAULT_AMQP {
        eprintln!("SKIPPED: the proxy forwards to 127.0.0.1:5672 only, AMQP_URL points elsewhere");
        return;
    }
    let Some(connection) = broker().await else {
        return;
    };
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let queue = unique_queue("reconnect");
    let store = TempDir::new("reconnect");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let env = |command: &mut Command| {
        command
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
            )
            .env("CLOUDIMG_QUEUE", &queue)
            .env("CLOUDIMG_OUT_DIR", &store.0)
            .env_remove("BUCKET_NAME")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
    };
    let mut producer = Command::new(binary("cloudimg-producer"));
    env(&mut producer);
    producer.env("CLOUDIMG_LISTEN", &address);
    let mut producer = Service::start("producer", producer);
    let mut worker = Command::new(binary("cloudimg-worker"));
    env(&mut worker);
    let mut worker = Service::start("worker", worker);
    assert!(wait_for_port(port, Duration::from_secs(20)));

    let images = TempDir::new("reconnect-images");
    let first = images.0.join("first.jpg");
    let second = images.0.join("second.jpg");
    std::fs::write(&first, fixture_jpeg(96, 64, 1, 20, 90)).unwrap();
    std::fs::write(&second, fixture_jpeg(64, 96, 2, 20, 90)).unwrap();

    let record = tokio::task::spawn_blocking({
        let address = address.clone();
        move || send_and_wait(&address, &first)
    })
    .await
    .unwrap();
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

    let record = tokio::task::spawn_blocking({
        let address = address.clone();
        move || send_and_wait(&address, &second)
    })
    .await
    .unwrap();
    assert_eq!(record["status"], "done", "after the cut: {record}");
    let key = record["key"].as_str().unwrap();
    assert!(store.0.join(key).is_file());

    let p = producer.terminate(Duration::from_secs(20));
    let w = worker.terminate(Duration::from_secs(20));
    delete_queues(&connection, &queue).await;
    assert!(p.is_some_and(|s| s.success()), "producer: {p:?}");
    assert!(w.is_some_and(|s| s.success()), "worker: {w:?}");
}
