//! What the shells' integration and end-to-end tests share: finding the services the test script
//! started (or skipping, loudly, and never under `CI=true`), the real binaries as processes, unique
//! queues and buckets that are deleted afterwards, the corpus, fixture images made in the test, and
//! the proxies a test owns (TCP in front of RabbitMQ or S3, an S3 gate). [`producer`] adds what the
//! producer's own tests need (the binary with an exact environment, raw uploads, AMQP frames).

mod judge;
pub mod producer;

pub use cloudimg_reference::{corpus, record_skip, skip};
pub use judge::{FIXTURE_MIN_DB, judge};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

pub const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

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
    /// The PSNR a result of this file must reach against it: the engine's conformance bound for
    /// its class, for a file marked `ok`. `None` for `either` files (the conformance test holds
    /// only their size, as [`judge`] with a bound of 0 does) and `reject` ones.
    pub fn min_db(&self) -> Option<f64> {
        (self.expect == "ok")
            .then(|| cloudimg_reference::min_db(&cloudimg_reference::corpus_class(&self.path)))
    }

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
            // Files whose header names no size (not images at all) have 0 x 0.
            Some(ManifestRow {
                path: f[0].to_owned(),
                width: f[5].parse().unwrap_or(0),
                height: f[6].parse().unwrap_or(0),
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

/// A binary of this workspace: in the profile's folder, the parent of the `deps/` folder the
/// running test executable is in (cargo builds every member's binaries before a workspace's tests;
/// `scripts/test.sh` builds them first).
pub fn binary(name: &str) -> PathBuf {
    let test = std::env::current_exe().expect("the test executable's path");
    let profile = test
        .parent()
        .and_then(Path::parent)
        .expect("tests run from <target>/<profile>/deps");
    let path = profile.join(name);
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
    /// Where its stderr goes, when started by [`Shells`].
    pub log: Option<PathBuf>,
}

impl Service {
    pub fn start(name: &'static str, mut command: Command) -> Service {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service {
            name,
            child: Some(child),
            log: None,
        }
    }

    /// What it logged so far.
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit status (the drain must end with 0).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal_term();
        self.wait_exit(timeout)
    }

    /// Sends SIGTERM and returns at once.
    pub fn signal_term(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// Waits up to `timeout` for the exit status; kills it and returns `None` past that.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
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

/// A result JPEG as a viewer shows it.
pub struct ResultImage {
    /// Width and height after the image's own EXIF orientation.
    pub displayed: (u32, u32),
    /// As stored, before orientation.
    pub stored: (u32, u32),
    pub orientation: u32,
    pub format: jpeg_decoder::PixelFormat,
}

impl ResultImage {
    /// Decodes `jpeg` whole (a truncated result is an error) with an independent decoder.
    pub fn decode(jpeg: &[u8]) -> Result<ResultImage, String> {
        let mut decoder = jpeg_decoder::Decoder::new(jpeg);
        decoder.decode().map_err(|e| e.to_string())?;
        let info = decoder.info().ok_or("no frame header")?;
        let stored = (u32::from(info.width), u32::from(info.height));
        let orientation = exif::Reader::new()
            .read_from_container(&mut std::io::Cursor::new(jpeg))
            .ok()
            .and_then(|e| {
                e.get_field(exif::Tag::Orientation, exif::In::PRIMARY)
                    .and_then(|f| f.value.get_uint(0))
            })
            .unwrap_or(1);
        let displayed = if (5..=8).contains(&orientation) {
            (stored.1, stored.0)
        } else {
            stored
        };
        Ok(ResultImage {
            displayed,
            stored,
            orientation,
            format: info.pixel_format,
        })
    }

    pub fn is_grayscale(&self) -> bool {
        self.format == jpeg_decoder::PixelFormat::L8
    }
}

/// A JPEG of `width` x `height` made of a colour gradient plus seeded noise; `noise` 0..=255 sets
/// how incompressible it is.
pub fn fixture_jpeg(width: u16, height: u16, seed: u64, noise: u8, quality: u8) -> Vec<u8> {
    encode_fixture(width, height, seed, noise, quality, false)
}

/// [`fixture_jpeg`], progressive.
pub fn fixture_progressive_jpeg(width: u16, height: u16, seed: u64) -> Vec<u8> {
    encode_fixture(width, height, seed, 30, 90, true)
}

fn encode_fixture(
    width: u16,
    height: u16,
    seed: u64,
    noise: u8,
    quality: u8,
    progressive: bool,
) -> Vec<u8> {
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
    let mut encoder = jpeg_encoder::Encoder::new(&mut out, quality);
    encoder.set_progressive(progressive);
    encoder
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

// ---- the shells as processes ----------------------------------------------------------------

/// A bucket on the S3 endpoint, made for one test and deleted by [`Bucket::delete`].
pub struct Bucket {
    pub client: aws_sdk_s3::Client,
    pub name: String,
}

impl Bucket {
    pub async fn create(endpoint: &str) -> Bucket {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .load()
            .await;
        let client = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(true)
                .build(),
        );
        let name = format!(
            "cloudimg-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        client.create_bucket().bucket(&name).send().await.unwrap();
        Bucket { client, name }
    }

    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.name)
                .set_continuation_token(token)
                .send()
                .await
                .unwrap();
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => return keys,
            }
        }
    }

    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let object = self
            .client
            .get_object()
            .bucket(&self.name)
            .key(key)
            .send()
            .await
            .ok()?;
        Some(object.body.collect().await.unwrap().into_bytes().to_vec())
    }

    pub async fn delete(&self) {
        for key in self.keys().await {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await;
        }
        let _ = self.client.delete_bucket().bucket(&self.name).send().await;
    }
}

/// Removes from `command` every `CLOUDIMG_*` setting of the environment the tests run in (limits,
/// staging, security, queue type...), so a developer's shell never changes what a test measures;
/// the test sets what it needs afterwards (a later `env` wins).
pub fn without_inherited_settings(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CLOUDIMG_") {
            command.env_remove(name);
        }
    }
    command
}

/// Where the shells keep results.
#[derive(Clone)]
pub enum StoreEnv {
    S3 { bucket: String, endpoint: String },
    Dir(PathBuf),
}

/// How to start the real producer and worker binaries against one queue and store, with their
/// logs kept in files (so tests can read what they logged).
pub struct Shells {
    pub amqp_url: String,
    pub queue: String,
    pub store: StoreEnv,
    pub logs: TempDir,
    started: std::cell::Cell<u32>,
}

impl Shells {
    pub fn new(amqp_url: impl Into<String>, queue: &str, store: StoreEnv) -> Shells {
        Shells {
            amqp_url: amqp_url.into(),
            queue: queue.to_owned(),
            store,
            logs: TempDir::new("logs"),
            started: Default::default(),
        }
    }

    /// The shells on the default broker, keeping results in `bucket` on the S3 endpoint.
    pub fn on_s3(queue: &str, bucket: &Bucket, endpoint: &str) -> Shells {
        let store = StoreEnv::S3 {
            bucket: bucket.name.clone(),
            endpoint: endpoint.to_owned(),
        };
        Shells::new(amqp_url(), queue, store)
    }

    /// The shells on the default broker reached through `proxy` (which must forward to
    /// 127.0.0.1:5672), keeping results in `store`.
    pub fn through_proxy(proxy: &Proxy, queue: &str, store: &TempDir) -> Shells {
        Shells::new(
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port),
            queue,
            StoreEnv::Dir(store.0.clone()),
        )
    }

    /// A command for `name` (a binary of the workspace) with the shells' environment.
    pub fn command(&self, name: &str) -> Command {
        let mut command = Command::new(binary(name));
        without_inherited_settings(&mut command)
            .env("AMQP_URL", &self.amqp_url)
            .env("CLOUDIMG_QUEUE", &self.queue)
            // The binaries' default filter: what an operator gets.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        match &self.store {
            StoreEnv::S3 { bucket, endpoint } => {
                command
                    .env("BUCKET_NAME", bucket)
                    .env("AWS_ENDPOINT_URL", endpoint)
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_ACCESS_KEY_ID", "test")
                    .env("AWS_SECRET_ACCESS_KEY", "test");
            }
            StoreEnv::Dir(dir) => {
                command
                    .env("CLOUDIMG_OUT_DIR", dir)
                    .env_remove("BUCKET_NAME");
            }
        }
        command
    }

    fn start(&self, name: &'static str, mut command: Command) -> Service {
        let n = self.started.get() + 1;
        self.started.set(n);
        let log = self.logs.0.join(format!("{n:02}-{name}.log"));
        command.stderr(std::fs::File::create(&log).unwrap());
        let mut service = Service::start(name, command);
        service.log = Some(log);
        service
    }

    /// Starts a producer with `extra` environment; returns it and its `HOST:PORT`.
    pub fn producer(&self, extra: &[(&str, &str)]) -> (Service, String) {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let mut command = self.command("cloudimg-producer");
        command.env("CLOUDIMG_LISTEN", &address);
        for (k, v) in extra {
            command.env(k, v);
        }
        let service = self.start("producer", command);
        assert!(
            wait_for_port(port, Duration::from_secs(20)),
            "the producer did not listen on {address}"
        );
        (service, address)
    }

    /// Starts a worker (concurrency 2 unless `extra` says otherwise).
    pub fn worker(&self, extra: &[(&str, &str)]) -> Service {
        let mut command = self.command("cloudimg-worker");
        command.env("CLOUDIMG_CONCURRENCY", "2");
        for (k, v) in extra {
            command.env(k, v);
        }
        self.start("worker", command)
    }

    /// Fails the test with every problem and every log when there is any problem.
    pub fn assert_no_problems(&self, problems: &[String]) {
        assert!(
            problems.is_empty(),
            "{}\n{}",
            problems.join("\n"),
            self.all_logs()
        );
    }

    /// Everything every process logged so far, for a failure message.
    pub fn all_logs(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(&self.logs.0)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| {
                format!(
                    "--- {}\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                )
            })
            .collect()
    }
}

/// SIGTERM to a producer and a worker: each must drain and exit 0 (within 20 s and 30 s).
/// Returns a problem for each that did not.
pub fn stop_shells(producer: &mut Service, worker: &mut Service) -> Vec<String> {
    let statuses = [
        (&mut *producer, Duration::from_secs(20)),
        (&mut *worker, Duration::from_secs(30)),
    ]
    .map(|(service, timeout)| (service.name, service.terminate(timeout)));
    statuses
        .into_iter()
        .filter(|(_, status)| !status.is_some_and(|s| s.success()))
        .map(|(name, status)| format!("{name} did not exit 0 on SIGTERM: {status:?}"))
        .collect()
}

/// What `cloudimg send` did.
#[derive(Debug)]
pub struct Sent {
    pub code: Option<i32>,
    pub records: Vec<serde_json::Value>,
    pub stderr: String,
}

impl Sent {
    pub fn by_file(&self) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.records
            .iter()
            .map(|r| (r["file"].as_str().unwrap_or("?").to_owned(), r.clone()))
            .collect()
    }
}

/// Runs the real `cloudimg send --json` with `args` (paths, flags) against `producer`.
pub fn send(producer: &str, args: &[&std::ffi::OsStr]) -> Sent {
    let output = without_inherited_settings(&mut Command::new(binary("cloudimg")))
        .arg("send")
        .arg("--json")
        .args(args)
        .args(["--producer", producer])
        .stdin(Stdio::null())
        .output()
        .expect("cannot run cloudimg send");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let records = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    Sent {
        code: output.status.code(),
        records,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// `send` on a blocking thread, for async tests.
pub async fn send_async(producer: &str, args: Vec<std::ffi::OsString>) -> Sent {
    let producer = producer.to_owned();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        send(&producer, &args)
    })
    .await
    .unwrap()
}

/// `GET /metrics` from a Prometheus endpoint, as text.
pub fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    // A process just started may not listen yet.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() > deadline => panic!("no metrics on port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or(("", ""));
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "metrics answered {head:?}"
    );
    body.to_owned()
}

/// The worker's metrics once they have settled: `send --wait` sees a result as soon as it is
/// written, and the worker counts the job after its ack, a moment later. Scrapes until the worker
/// holds no job and `cloudimg_jobs_total` (all outcomes) has reached `jobs`, or `timeout` passes;
/// returns the last scrape either way (the caller's checks then say what is off).
pub async fn settled_worker_metrics(port: u16, jobs: f64, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = scrape(port);
        let settled = metric(&text, "cloudimg_jobs_in_flight") == Some(0.0)
            && metric(&text, "cloudimg_jobs_total").unwrap_or(0.0) >= jobs;
        if settled || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of every sample of `series` (a metric name, optionally with `{label="value"}` pairs
/// that must all appear on the sample), or `None` when no sample matches.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = match series.split_once('{') {
        Some((n, l)) => (n, l.trim_end_matches('}')),
        None => (series, ""),
    };
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((sample, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (sample_name, sample_labels) = match sample.split_once('{') {
            Some((n, l)) => (n, l),
            None => (sample, ""),
        };
        if sample_name == name && wanted.iter().all(|w| sample_labels.contains(w)) {
            *total.get_or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Peak resident memory of a process so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Polls `check` every 100 ms until it is true or `timeout` passes; returns the last answer.
pub async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- a TCP proxy the tests own, between the shells and a server --------------------------------

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forwards both ways.
    Forward,
    /// Holds every byte (open connections and new ones) until the mode changes: a server that
    /// stopped answering.
    Stall,
    /// Cuts every open connection and closes new ones at once: a server that is gone.
    Refuse,
}

/// A proxy in front of the default broker, or `None` (with the reason printed) when `AMQP_URL`
/// points elsewhere: fault tests cut the proxy, never the shared broker.
pub async fn broker_proxy() -> Option<Proxy> {
    if amqp_url() != DEFAULT_AMQP {
        return skip("the proxy forwards to 127.0.0.1:5672 only, AMQP_URL points elsewhere");
    }
    Some(Proxy::start("127.0.0.1:5672").await)
}

/// Forwards loopback connections to `upstream`; [`Proxy::set`] changes what it does.
pub struct Proxy {
    pub port: u16,
    mode: tokio::sync::watch::Sender<ProxyMode>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mode, _) = tokio::sync::watch::channel(ProxyMode::Forward);
        let links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let links = links.clone();
            let mode = mode.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let upstream = upstream.clone();
                    let mut watch = mode.subscribe();
                    let link = tokio::spawn(async move {
                        if !wait_unless_stalled(&mut watch).await {
                            return; // refused: dropping the socket closes it
                        }
                        let Ok(server) = tokio::net::TcpStream::connect(upstream.as_str()).await
                        else {
                            return;
                        };
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(pipe(cr, sw, watch.clone()), pipe(sr, cw, watch.clone()));
                    });
                    let mut links = links.lock().unwrap();
                    links.retain(|l| !l.is_finished());
                    links.push(link);
                }
            }
        });
        Proxy {
            port,
            mode,
            links,
            accept,
        }
    }

    pub fn set(&self, mode: ProxyMode) {
        self.mode.send_replace(mode);
        if mode == ProxyMode::Refuse {
            self.cut();
        }
    }

    /// Drops every connection through the proxy now (new ones are still handled by the mode);
    /// returns how many were open.
    pub fn cut(&self) -> usize {
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

/// Waits while the proxy stalls; `false` when it refuses.
async fn wait_unless_stalled(mode: &mut tokio::sync::watch::Receiver<ProxyMode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            ProxyMode::Forward => return true,
            ProxyMode::Refuse => return false,
            ProxyMode::Stall => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: tokio::sync::watch::Receiver<ProxyMode>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = async {
                while mode.changed().await.is_ok() {
                    if *mode.borrow() == ProxyMode::Refuse {
                        return;
                    }
                }
                std::future::pending::<()>().await
            } => return,
        };
        if !wait_unless_stalled(&mut mode).await {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

// ---- TLS material made for a test ------------------------------------------------------------

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`, made with the
/// `openssl` command (PEM files in `dir`).
pub struct TestPki {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

pub fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn make_pki(dir: &Path) -> TestPki {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=cloudimg test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    TestPki {
        ca_cert: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
    }
}

// ---- an S3 gate: what real S3 enforces and moto does not, and refusals on demand ----------------

/// A refusal the gate answers instead of forwarding: requests with `method` whose path contains
/// `path_part`, or whose headers contain `header_part` (either may be empty = any).
#[derive(Debug, Clone)]
pub struct S3Refusal {
    pub method: &'static str,
    pub path_part: String,
    pub header_part: String,
    pub status: u16,
    pub code: &'static str,
}

/// An HTTP/1.1 gate in front of moto. It enforces S3's 2 KB limit on user metadata
/// (`x-amz-meta-*` names and values; S3 answers 400 `MetadataTooLarge`, moto accepts anything)
/// and answers the [`S3Refusal`]s a test sets, with S3's error XML; everything else is forwarded
/// (one upstream connection per request, `Connection: close`).
pub struct S3Gate {
    pub endpoint: String,
    refusals: Arc<Mutex<Vec<S3Refusal>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
}

/// S3's limit on user-defined metadata per object.
pub const S3_METADATA_LIMIT: usize = 2048;

impl S3Gate {
    pub async fn start(upstream_endpoint: &str) -> S3Gate {
        let upstream = upstream_endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let refusals: Arc<Mutex<Vec<S3Refusal>>> = Arc::default();
        let refused: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let accept = tokio::spawn({
            let refusals = refusals.clone();
            let refused = refused.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(gate_connection(
                        client,
                        upstream.clone(),
                        refusals.clone(),
                        refused.clone(),
                    ));
                }
            }
        });
        S3Gate {
            endpoint: format!("http://127.0.0.1:{port}"),
            refusals,
            refused,
            accept,
        }
    }

    pub fn refuse(&self, refusal: S3Refusal) {
        self.refusals.lock().unwrap().push(refusal);
    }

    pub fn clear(&self) {
        self.refusals.lock().unwrap().clear();
    }

    /// How many requests the gate answered with an error so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for S3Gate {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn gate_connection(
    mut client: tokio::net::TcpStream,
    upstream: String,
    refusals: Arc<Mutex<Vec<S3Refusal>>>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    loop {
        // The request head.
        let head_end = loop {
            if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 16 << 10];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let path = parts.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert!(
            header("transfer-encoding").is_none(),
            "the S3 gate handles Content-Length bodies only: {head}"
        );
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = vec![0u8; 64 << 10];
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buffer.drain(..head_end + length).collect();

        let metadata_bytes: usize = headers
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("x-amz-meta-").map(|k| k.len() + v.len()))
            .sum();
        let refusal = if metadata_bytes > S3_METADATA_LIMIT {
            Some((400, "MetadataTooLarge"))
        } else {
            refusals
                .lock()
                .unwrap()
                .iter()
                .find(|r| {
                    r.method == method
                        && path.contains(&r.path_part)
                        && (r.header_part.is_empty() || head.contains(&r.header_part))
                })
                .map(|r| (r.status, r.code))
        };
        if let Some((status, code)) = refusal {
            refused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = if method == "HEAD" {
                String::new()
            } else {
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
                     <Message>refused by the test's S3 gate</Message></Error>"
                )
            };
            let response = format!(
                "HTTP/1.1 {status} Refused\r\nContent-Type: application/xml\r\n\
                 x-amz-request-id: gate\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            if client.write_all(response.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }

        // Forward, one request per upstream connection, and relay the answer to its end.
        let Ok(mut server) = tokio::net::TcpStream::connect(upstream.as_str()).await else {
            return;
        };
        let mut forwarded = format!("{request_line}\r\n");
        for (k, v) in &headers {
            if k != "connection" {
                forwarded.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        forwarded.push_str("connection: close\r\n\r\n");
        if server.write_all(forwarded.as_bytes()).await.is_err()
            || server.write_all(&request[head_end..]).await.is_err()
        {
            return;
        }
        let mut answer = Vec::new();
        if server.read_to_end(&mut answer).await.is_err() {
            return;
        }
        let _ = client.write_all(&answer).await;
        // moto answered `Connection: close`; the client opens a new connection.
        return;
    }
}

/// Uploads `data` named `file_name` through the producer's gRPC API directly, as a client other
/// than `cloudimg send` could (any name, any size).
pub async fn upload_raw(
    producer: &str,
    file_name: &str,
    data: Vec<u8>,
) -> Result<cloudimg_runtime::proto::UploadReply, tonic::Status> {
    use cloudimg_runtime::proto::{UploadMetadata, UploadRequest, upload_request};
    let mut client = cloudimg_runtime::proto::image_service_client::ImageServiceClient::connect(
        format!("http://{producer}"),
    )
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut messages = vec![UploadRequest {
        part: Some(upload_request::Part::Metadata(UploadMetadata {
            file_name: file_name.to_owned(),
            size: data.len() as u64,
            ..Default::default()
        })),
    }];
    // Chunks under gRPC's 4 MiB message limit, as the real client sends them.
    messages.extend(data.chunks(1 << 20).map(|chunk| UploadRequest {
        part: Some(upload_request::Part::Chunk(chunk.to_vec().into())),
    }));
    client
        .upload(futures_util::stream::iter(messages))
        .await
        .map(|r| r.into_inner())
}

/// Asks the producer's `GetJob` about `job_id` (with the key its upload was answered), as
/// `cloudimg send --wait` does, and returns the answer as it came.
pub async fn get_job(
    producer: &str,
    job_id: &str,
    key: &str,
) -> Result<cloudimg_runtime::proto::GetJobReply, tonic::Status> {
    let mut client = cloudimg_runtime::proto::image_service_client::ImageServiceClient::connect(
        format!("http://{producer}"),
    )
    .await
    .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_job(cloudimg_runtime::proto::GetJobRequest {
            job_id: job_id.to_owned(),
            key: key.to_owned(),
        })
        .await
        .map(|r| r.into_inner())
}
