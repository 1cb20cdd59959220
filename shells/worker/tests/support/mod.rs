//! What the worker's integration and end-to-end tests share: finding the services the test script
//! started (or skipping, except under `CI=true`), unique queues and buckets that are deleted
//! afterwards, the corpus, and fixture images made in the test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Skips the test (returns `None`) with a printed reason, or fails it under `CI=true`.
pub fn skip<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("required test environment missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    None
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_AMQP.to_owned())
}

/// A broker connection, or a skip.
pub async fn broker() -> Option<lapin::Connection> {
    match lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await {
        Ok(c) => Some(c),
        Err(e) => skip(&format!("no RabbitMQ at {}: {e}", amqp_url())),
    }
}

/// The S3 endpoint the test script started (`AWS_ENDPOINT_URL`), or a skip.
pub fn s3_endpoint() -> Option<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(ep) if !ep.is_empty() => Some(ep),
        _ => skip("AWS_ENDPOINT_URL is not set (scripts/test.sh starts moto_server and sets it)"),
    }
}

/// A queue name unique to this test run: `$CLOUDIMG_TEST_QUEUE-<what>-<random>`.
pub fn unique_queue(what: &str) -> String {
    let prefix = std::env::var("CLOUDIMG_TEST_QUEUE")
        .unwrap_or_else(|_| format!("cloudimg-test-{}", std::process::id()));
    format!(
        "{prefix}-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Deletes a work queue and its dead-letter queue.
pub async fn delete_queues(connection: &lapin::Connection, queue: &str) {
    if let Ok(ch) = connection.create_channel().await {
        for q in [queue.to_owned(), format!("{queue}.dead")] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// How many messages a queue holds (declared passively: it must exist).
pub async fn message_count(connection: &lapin::Connection, queue: &str) -> u32 {
    let ch = connection.create_channel().await.unwrap();
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap()
    .message_count()
}

/// The corpus folder, or a skip.
pub fn corpus() -> Option<PathBuf> {
    let dir = std::env::var("CLOUDIMG_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"));
    if dir.join("MANIFEST.tsv").is_file() {
        Some(dir)
    } else {
        skip(&format!(
            "no corpus at {} (set CLOUDIMG_CORPUS)",
            dir.display()
        ))
    }
}

/// One row of `MANIFEST.tsv`.
#[derive(Debug, Clone)]
pub struct ManifestRow {
    pub path: String,
    pub width: u32,
    pub height: u32,
    pub expect: String,
    /// From `exif_orientation=N` in the details column; 1 when absent.
    pub orientation: u32,
}

impl ManifestRow {
    /// The size the image displays at.
    pub fn displayed(&self) -> (u32, u32) {
        if (5..=8).contains(&self.orientation) {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }
}

pub fn manifest(corpus: &Path) -> Vec<ManifestRow> {
    let text = std::fs::read_to_string(corpus.join("MANIFEST.tsv")).unwrap();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 10 {
                return None;
            }
            let orientation = f[8]
                .split(';')
                .find_map(|kv| kv.strip_prefix("exif_orientation="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            Some(ManifestRow {
                path: f[0].to_owned(),
                width: f[5].parse().ok()?,
                height: f[6].parse().ok()?,
                expect: f[9].to_owned(),
                orientation,
            })
        })
        .collect()
}

/// A free loopback port (bound and released; the race is harmless on a test machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A binary of this workspace, next to this crate's own (cargo builds every member's binaries
/// before it runs a workspace's tests).
pub fn binary(name: &str) -> PathBuf {
    let own = PathBuf::from(env!("CARGO_BIN_EXE_cloudimg-worker"));
    let path = own.with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace` (or `cargo test --workspace`) first",
        path.display()
    );
    path
}

/// A child process killed on drop unless it was stopped.
pub struct Service {
    pub name: &'static str,
    pub child: Option<Child>,
}

impl Service {
    pub fn start(name: &'static str, mut command: Command) -> Service {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit status (the drain must end with 0).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A JPEG of `width` x `height` made of a colour gradient plus seeded noise; `noise` 0..=255 sets
/// how incompressible it is.
pub fn fixture_jpeg(width: u16, height: u16, seed: u64, noise: u8, quality: u8) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height as u32 {
        for x in 0..width as u32 {
            for c in 0..3u32 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let n = if noise == 0 {
                    0
                } else {
                    ((state >> 33) % (noise as u64 + 1)) as u32
                };
                let base = (x * 255 / width as u32 + y * 255 / height as u32 + c * 60) & 0xFF;
                rgb.push((base + n).min(255) as u8);
            }
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, quality)
        .encode(&rgb, width, height, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("cloudimg-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
