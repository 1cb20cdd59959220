//! What the tests of the real `cloudimg-producer` binary share: starting it with exactly the
//! settings a test gives, gRPC uploads held open or fed slowly, JPEG fixtures, and a TCP proxy
//! between the producer and RabbitMQ that the test controls at the AMQP frame level.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudimg_runtime::proto::image_service_client::ImageServiceClient;
use cloudimg_runtime::proto::{
    ConvertOptions, UploadMetadata, UploadReply, UploadRequest, upload_request,
};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

pub use crate::{DEFAULT_AMQP, amqp_url, broker, free_port, skip};

pub fn unique_name(what: &str) -> String {
    let prefix = std::env::var("CLOUDIMG_TEST_QUEUE")
        .unwrap_or_else(|_| format!("cloudimg-test-{}", std::process::id()));
    format!(
        "{prefix}-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// The binary with an empty environment plus `env`: nothing from the developer's shell (limits,
/// a token, a bucket) changes what a test measures.
pub fn producer_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(crate::binary("cloudimg-producer"));
    command.env_clear().stdin(Stdio::null());
    for (k, v) in env {
        command.env(k, v);
    }
    command
}

/// A running producer binary on its own queue and local store directory.
pub struct Producer {
    pub child: Child,
    pub port: u16,
    pub queue: String,
    pub dir: PathBuf,
    log: PathBuf,
}

impl Producer {
    /// Starts it against `amqp` (the broker or a proxy) with `env` on top of the queue, the store
    /// and the listen address; waits until it listens.
    pub fn start(what: &str, amqp: &str, env: &[(&str, &str)]) -> Producer {
        let port = free_port();
        let queue = unique_name(what);
        let dir = std::env::temp_dir().join(format!("cloudimg-{queue}"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("producer.log");
        let listen = format!("127.0.0.1:{port}");
        let mut command = producer_command(env);
        command
            .env("AMQP_URL", amqp)
            .env("CLOUDIMG_QUEUE", &queue)
            .env("CLOUDIMG_OUT_DIR", dir.join("store"))
            .env("CLOUDIMG_LISTEN", &listen)
            .stderr(std::fs::File::create(&log).unwrap());
        let child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the producer did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Producer {
            child,
            port,
            queue,
            dir,
            log,
        }
    }

    /// A new HTTP/2 connection to it.
    pub async fn connect(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn health(&self, channel: &Channel) -> Option<ServingStatus> {
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "cloudimg.v1.ImageService".into(),
            })
            .await
            .ok()
            .map(|r| r.into_inner().status())
    }

    /// Waits (up to 20 s) until health says `want`.
    pub async fn wait_health(&self, channel: &Channel, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.health(channel).await;
            if status == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "never {want:?}: {status:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where a staged upload of `job_id` lies in the local store.
    pub fn staged_path(&self, job_id: &str) -> PathBuf {
        self.dir.join("store/staging").join(job_id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process's peak resident memory (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Takes every message off its queue; returns their job ids.
    pub async fn drain_queue(&self, connection: &lapin::Connection) -> Vec<String> {
        let channel = connection.create_channel().await.unwrap();
        let mut ids = Vec::new();
        while let Some(message) = channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            ids.push(
                cloudimg_runtime::amqp::header_str(
                    message.delivery.properties.headers().as_ref(),
                    "x-cloudimg-job-id",
                )
                .unwrap_or_default(),
            );
        }
        ids
    }

    /// Deletes its queues and its directory.
    pub async fn cleanup(&self, connection: &lapin::Connection) {
        let channel = connection.create_channel().await.unwrap();
        for q in [self.queue.clone(), format!("{}.dead", self.queue)] {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- uploads --------------------------------------------------------------------------------------

pub fn metadata(size: usize) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Metadata(UploadMetadata {
            file_name: "photo.jpg".into(),
            content_type: "image/jpeg".into(),
            size: size as u64,
            options: Some(ConvertOptions::default()),
        })),
    }
}

pub fn chunk(data: &[u8]) -> UploadRequest {
    UploadRequest {
        part: Some(upload_request::Part::Chunk(Bytes::copy_from_slice(data))),
    }
}

/// The messages of a whole upload of `data`, in chunks of `chunk_size`.
pub fn upload_of(data: &[u8], chunk_size: usize) -> Vec<UploadRequest> {
    let mut messages = vec![metadata(data.len())];
    messages.extend(data.chunks(chunk_size).map(chunk));
    messages
}

/// A noisy JPEG (compresses badly: a few KB even when small).
pub fn photo(width: u16, height: u16) -> Vec<u8> {
    let rgb: Vec<u8> = (0..width as usize * height as usize * 3)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 80)
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// `base` (a JPEG) grown to exactly `total` bytes with comment segments after SOI: still a valid
/// JPEG, as large as a test needs, made in microseconds.
pub fn padded_jpeg(base: &[u8], total: usize) -> Vec<u8> {
    let mut remaining = total - base.len();
    let segments = remaining.div_ceil(65_537);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&base[..2]);
    for i in 0..segments {
        let size = remaining / (segments - i);
        remaining -= size;
        let length = (size - 2) as u16;
        out.extend([0xFF, 0xFE]);
        out.extend(length.to_be_bytes());
        out.resize(out.len() + size - 4, b'c');
    }
    out.extend_from_slice(&base[2..]);
    assert_eq!(out.len(), total);
    out
}

/// An upload on `channel` that sends `first` and then whatever the returned sender sends; the
/// stream ends when the sender is dropped. The handle resolves to the producer's answer.
pub fn open_upload(
    channel: &Channel,
    first: Vec<UploadRequest>,
) -> (
    tokio::sync::mpsc::Sender<UploadRequest>,
    tokio::task::JoinHandle<Result<UploadReply, tonic::Status>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<UploadRequest>(first.len() + 8);
    for m in first {
        tx.try_send(m).unwrap();
    }
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut client = ImageServiceClient::new(channel.clone())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let call = tokio::spawn(async move { client.upload(stream).await.map(|r| r.into_inner()) });
    (tx, call)
}

/// A whole upload of `data` on `channel`.
pub async fn upload(channel: &Channel, data: &[u8]) -> Result<UploadReply, tonic::Status> {
    let (tx, call) = open_upload(channel, upload_of(data, 64 << 10));
    drop(tx);
    call.await.unwrap()
}

/// The answer of `call`, which must come within `limit` (a bound against a hung test, far above
/// what the producer is configured to take).
pub async fn answer(
    call: tokio::task::JoinHandle<Result<UploadReply, tonic::Status>>,
    limit: Duration,
) -> Result<UploadReply, tonic::Status> {
    tokio::time::timeout(limit, call)
        .await
        .expect("the producer answers the upload")
        .unwrap()
}

/// The value of an unlabelled metric on the Prometheus endpoint at `port`.
pub fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Polls `check` every 50 ms until it is true or `limit` passes (a bound against a hung test);
/// returns the last answer.
pub async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---- a proxy between the producer and RabbitMQ, at the AMQP frame level -------------------------

/// An AMQP frame on channel 0 carrying the method `class`.`method` with `arguments`.
pub fn connection_frame(method: u16, arguments: &[u8]) -> Vec<u8> {
    let mut payload = 10u16.to_be_bytes().to_vec(); // class 10: connection
    payload.extend(method.to_be_bytes());
    payload.extend(arguments);
    let mut frame = vec![1u8, 0, 0]; // a method frame on channel 0
    frame.extend((payload.len() as u32).to_be_bytes());
    frame.extend(payload);
    frame.push(0xCE);
    frame
}

/// `connection.blocked` (method 60) with `reason`, as RabbitMQ sends it under a resource alarm.
pub fn connection_blocked(reason: &str) -> Vec<u8> {
    let mut arguments = vec![reason.len() as u8];
    arguments.extend(reason.as_bytes());
    connection_frame(60, &arguments)
}

/// `connection.unblocked` (method 61).
pub fn connection_unblocked() -> Vec<u8> {
    connection_frame(61, &[])
}

/// Forwards connections to RabbitMQ, reading the broker's side frame by frame so a test can
/// insert frames of its own between them ([`FrameProxy::inject`]) or hold everything the broker
/// sends ([`FrameProxy::hold_replies`]) while the client's side still flows.
pub struct FrameProxy {
    pub port: u16,
    injectors: std::sync::Arc<std::sync::Mutex<Vec<tokio::sync::mpsc::UnboundedSender<Vec<u8>>>>>,
    hold: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl FrameProxy {
    /// A proxy in front of the default broker, or `None` (with the reason) when `AMQP_URL`
    /// points elsewhere: the tests never touch the shared broker's settings.
    pub async fn start() -> Option<FrameProxy> {
        if amqp_url() != DEFAULT_AMQP {
            return skip(
                "the frame proxy forwards to 127.0.0.1:5672 only, AMQP_URL points elsewhere",
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let injectors: std::sync::Arc<std::sync::Mutex<Vec<_>>> = Default::default();
        let (hold, _) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn({
            let injectors = injectors.clone();
            let hold = hold.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                        continue;
                    };
                    let (inject, injected) = tokio::sync::mpsc::unbounded_channel();
                    injectors.lock().unwrap().push(inject);
                    tokio::spawn(relay(client, server, injected, hold.subscribe()));
                }
            }
        });
        Some(FrameProxy {
            port,
            injectors,
            hold,
            accept,
        })
    }

    /// The broker URL through this proxy.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Sends `frame` to every client connected through the proxy, between two of the broker's
    /// frames; returns how many connections got it.
    pub fn inject(&self, frame: &[u8]) -> usize {
        let mut injectors = self.injectors.lock().unwrap();
        injectors.retain(|i| i.send(frame.to_vec()).is_ok());
        injectors.len()
    }

    /// Holds (or, with `false`, releases) every frame the broker sends, on every connection: a
    /// broker that takes messages but never confirms them.
    pub fn hold_replies(&self, hold: bool) {
        self.hold.send_replace(hold);
    }
}

impl Drop for FrameProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.injectors.lock().unwrap().clear();
    }
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    mut injected: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    mut hold: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    });
    // The broker's frames, whole: a 7-byte header (type, channel, size), the payload, 0xCE.
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let reader = tokio::spawn(async move {
        loop {
            let mut frame = vec![0u8; 7];
            if server_read.read_exact(&mut frame).await.is_err() {
                return;
            }
            let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
            frame.resize(7 + size + 1, 0);
            if server_read.read_exact(&mut frame[7..]).await.is_err()
                || frames_tx.send(frame).is_err()
            {
                return;
            }
        }
    });
    loop {
        let frame = tokio::select! {
            frame = frames.recv() => frame,
            frame = injected.recv() => frame,
        };
        let Some(frame) = frame else { break };
        if hold.wait_for(|held| !held).await.is_err() {
            break;
        }
        if client_write.write_all(&frame).await.is_err() {
            break;
        }
    }
    reader.abort();
    upstream.abort();
}

impl Producer {
    pub fn sigterm(&self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
    }

    /// The exit status and how long it took, or `None` (then killed) past `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(std::process::ExitStatus, Duration)> {
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}
