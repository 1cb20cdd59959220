//! `cloudimg send`: upload files and folders to a producer, optionally wait for the results.

use std::io::{IsTerminal, Write};
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudimg_runtime::proto::image_service_client::ImageServiceClient;
use cloudimg_runtime::proto::{
    ConvertOptions, GetJobRequest, JobState, UploadMetadata, UploadRequest, upload_request,
};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::inputs::{self, Input};

/// Chunk size of an upload: well under gRPC's customary 4 MiB message limit, large enough that
/// framing costs nothing.
pub const CHUNK_BYTES: usize = 1 << 20;

/// How many of the oldest unfinished jobs poll `GetJob` at once under `--wait`.
const POLL_WINDOW: usize = 4;

/// The producer when nothing is given.
pub const DEFAULT_PRODUCER: &str = "127.0.0.1:50051";

/// What `send` does, typed.
#[derive(Debug, Clone)]
pub struct SendConfig {
    pub paths: Vec<PathBuf>,
    /// `HOST:PORT` or an `http://`/`https://` URL.
    pub producer: String,
    /// Uploads in flight at once.
    pub concurrency: usize,
    /// Wait for every job to be done or failed, up to this long (from the start of the command).
    pub wait: Option<Duration>,
    /// JSON Lines on stdout instead of text.
    pub json: bool,
    pub options: ConvertOptions,
    pub token: Option<String>,
    /// Extra CA certificates (PEM) trusted for an `https://` producer.
    pub ca_pem: Option<String>,
    /// Adds `latency_ms` (upload start to the last status) to each JSON line; for benchmarks.
    pub latency: bool,
}

/// One image's report: the `--json` line (ARCHITECTURE.md's contract).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    pub file: String,
    pub job_id: Option<String>,
    pub key: Option<String>,
    /// `accepted`, `done`, `failed` or `skipped` (a file found in a folder that is not an
    /// image by its extension).
    pub status: &'static str,
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

impl Record {
    fn failed(file: &str, error: impl Into<String>) -> Record {
        Record {
            file: file.to_owned(),
            job_id: None,
            key: None,
            status: "failed",
            error: Some(error.into()),
            latency_ms: None,
        }
    }

    fn skipped(file: &str) -> Record {
        Record {
            file: file.to_owned(),
            job_id: None,
            key: None,
            status: "skipped",
            error: Some(inputs::SKIPPED_REASON.into()),
            latency_ms: None,
        }
    }

    /// Failed, or still only accepted when the command waited.
    pub fn is_failure(&self, waited: bool) -> bool {
        self.status == "failed" || (waited && self.status == "accepted")
    }
}

/// Whether a run succeeded: no image failed, and at least one was sent (a run that sent none of
/// what it was given, every file skipped or none found, has not done its job).
pub fn run_succeeded(records: &[Record], waited: bool) -> bool {
    !records.iter().any(|r| r.is_failure(waited))
        && records
            .iter()
            .any(|r| matches!(r.status, "accepted" | "done"))
}

/// The seed's form `cloudimg send IMAGE HOST:PORT`: a last argument that is not an existing path
/// and parses as `HOST:PORT` names the producer. Returns the paths and that producer, if any.
pub fn split_seed_form(args: &[String]) -> (Vec<PathBuf>, Option<String>) {
    if args.len() >= 2 {
        let last = &args[args.len() - 1];
        if !Path::new(last).exists() && is_host_port(last) {
            let paths = args[..args.len() - 1].iter().map(PathBuf::from).collect();
            return (paths, Some(last.clone()));
        }
    }
    (args.iter().map(PathBuf::from).collect(), None)
}

fn is_host_port(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else {
        return false;
    };
    !host.is_empty()
        && !host.contains('/')
        && port.parse::<u16>().is_ok_and(|p| p > 0)
        && (host.parse::<std::net::IpAddr>().is_ok()
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::Ipv6Addr>()
                .is_ok()
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
}

/// `HOST:PORT` becomes `http://HOST:PORT`; URLs stay as they are.
pub fn producer_uri(producer: &str) -> String {
    if producer.starts_with("http://") || producer.starts_with("https://") {
        producer.to_owned()
    } else {
        format!("http://{producer}")
    }
}

/// Who may poll `GetJob` now. Jobs finish roughly in the order they were accepted (one FIFO queue),
/// so only the `window` oldest unfinished jobs poll; the others wait their turn without a call.
/// That keeps `--wait` on a thousand queued images from costing the producer and the store
/// thousands of status requests a second.
struct WaitOrder {
    pending: std::sync::Mutex<std::collections::BTreeSet<u64>>,
    next: std::sync::atomic::AtomicU64,
    changed: tokio::sync::Notify,
    window: usize,
}

impl WaitOrder {
    fn new(window: usize) -> WaitOrder {
        WaitOrder {
            pending: Default::default(),
            next: Default::default(),
            changed: Default::default(),
            window: window.max(1),
        }
    }

    /// Takes a place in line (call when the job is accepted).
    fn join(&self) -> u64 {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
        seq
    }

    fn in_window(&self, seq: u64) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.iter().take(self.window).any(|s| *s == seq)
    }

    /// Resolves when `seq` is among the `window` oldest unfinished jobs.
    async fn turn(&self, seq: u64) {
        loop {
            let changed = self.changed.notified();
            if self.in_window(seq) {
                return;
            }
            changed.await;
        }
    }

    /// Leaves the line (done, failed or given up).
    fn leave(&self, seq: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&seq);
        self.changed.notify_waiters();
    }
}

/// Everything that stops `send` before any file could be tried.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("bad producer address {0:?}: {1}")]
    Address(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error(
        "refusing to send the token (CLOUDIMG_TOKEN) in clear to {0}: use an https:// producer, \
         or set CLOUDIMG_TLS_TERMINATED=true when TLS is added on the way (a sidecar or proxy)"
    )]
    TokenInClear(String),
}

async fn connect(producer: &str, ca_pem: Option<&str>) -> Result<Channel, String> {
    let uri = producer_uri(producer);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| format!("bad producer address {producer:?}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_adaptive_window(true);
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(pem) = ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
    }
    endpoint.connect().await.map_err(|e| {
        format!(
            "cannot reach the producer at {producer}: {}",
            error_chain(&e)
        )
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sends every image; prints one report per image as it completes (JSON Lines on stdout with
/// `json`, text otherwise), a progress bar on a terminal, and a summary on stderr. Returns the
/// reports in completion order.
pub async fn run(config: SendConfig, shutdown: CancellationToken) -> Vec<Record> {
    let started = Instant::now();
    let deadline = config.wait.map(|w| started + w);
    let inputs::Collected {
        inputs: found,
        refused,
        skipped,
    } = inputs::collect(&config.paths);
    let total = found.len() + refused.len() + skipped.len();
    let terminal = std::io::stderr().is_terminal();
    let bar = if terminal {
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut records = Vec::with_capacity(total);
    let mut report = |record: Record| {
        print_record(&record, config.json, &bar);
        bar.inc(1);
        records.push(record);
    };
    for r in refused {
        report(Record::failed(&r.shown, r.reason));
    }
    for shown in &skipped {
        report(Record::skipped(shown));
    }

    match connect(&config.producer, config.ca_pem.as_deref()).await {
        Err(reason) => {
            for input in &found {
                report(Record::failed(&input.shown, reason.clone()));
            }
        }
        Ok(channel) => {
            let client = ImageServiceClient::new(channel);
            let uploads = Arc::new(Semaphore::new(config.concurrency.max(1)));
            let polls = Arc::new(WaitOrder::new(POLL_WINDOW));
            let config = Arc::new(config.clone());
            let (tx, mut rx) = mpsc::unbounded_channel();
            for input in found {
                let tx = tx.clone();
                let client = client.clone();
                let uploads = uploads.clone();
                let polls = polls.clone();
                let config = config.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let record =
                        send_one(client, &input, &config, uploads, polls, deadline, shutdown).await;
                    let _ = tx.send(record);
                });
            }
            drop(tx);
            while let Some(record) = rx.recv().await {
                report(record);
            }
        }
    }
    bar.finish_and_clear();
    summarize(&records, config.wait.is_some(), started.elapsed());
    records
}

async fn send_one(
    mut client: ImageServiceClient<Channel>,
    input: &Input,
    config: &SendConfig,
    uploads: Arc<Semaphore>,
    polls: Arc<WaitOrder>,
    deadline: Option<Instant>,
    shutdown: CancellationToken,
) -> Record {
    let Ok(permit) = uploads.acquire().await else {
        return Record::failed(&input.shown, "interrupted");
    };
    if shutdown.is_cancelled() {
        return Record::failed(&input.shown, "interrupted");
    }
    let started = Instant::now();
    let (head, file, size) = match open_upload(&input.path).await {
        Ok(opened) => opened,
        Err(e) => return Record::failed(&input.shown, format!("cannot read: {e}")),
    };
    let file_name = input
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let metadata = UploadRequest {
        part: Some(upload_request::Part::Metadata(UploadMetadata {
            file_name,
            content_type: guess_content_type(&head).into(),
            size,
            options: Some(config.options),
        })),
    };
    let read_error = Arc::new(std::sync::Mutex::new(None));
    let messages = futures_util::stream::once(async move { metadata }).chain(file_chunks(
        head,
        file,
        read_error.clone(),
    ));
    let mut request = tonic::Request::new(messages);
    if let Some(token) = &config.token {
        match format!("Bearer {token}").parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => return Record::failed(&input.shown, "the token is not a valid header"),
        }
    }
    let reply = match client.upload(request).await {
        Ok(reply) => reply.into_inner(),
        Err(_) if let Some(e) = read_error.lock().unwrap().take() => {
            return Record::failed(&input.shown, format!("cannot read: {e}"));
        }
        Err(status) => {
            return Record::failed(
                &input.shown,
                format!("{:?}: {}", status.code(), status.message()),
            );
        }
    };
    drop(permit);
    let mut record = Record {
        file: input.shown.clone(),
        job_id: Some(reply.job_id.clone()),
        key: Some(reply.key.clone()),
        status: "accepted",
        error: None,
        latency_ms: None,
    };
    if let Some(deadline) = deadline {
        let seq = polls.join();
        let waited = tokio::select! {
            r = async {
                polls.turn(seq).await;
                wait_for(&mut client, &reply.job_id, &reply.key, config, deadline).await
            } => r,
            _ = tokio::time::sleep_until(deadline.into()) => {
                Err(("accepted", "timed out waiting for the result".to_owned()))
            }
        };
        polls.leave(seq);
        match waited {
            Ok(()) => record.status = "done",
            Err((status, error)) => {
                record.status = status;
                record.error = Some(error);
            }
        }
    }
    if config.latency {
        record.latency_ms = Some(started.elapsed().as_millis() as u64);
    }
    record
}

/// Polls `GetJob` until the job is done or failed or the deadline passes. Polls start fast and slow
/// down, so short jobs are seen quickly and long ones cost few calls.
async fn wait_for(
    client: &mut ImageServiceClient<Channel>,
    job_id: &str,
    key: &str,
    config: &SendConfig,
    deadline: Instant,
) -> Result<(), (&'static str, String)> {
    let mut delay = Duration::from_millis(50);
    loop {
        let mut request = tonic::Request::new(GetJobRequest {
            job_id: job_id.to_owned(),
            key: key.to_owned(),
        });
        if let Some(token) = &config.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        match client.get_job(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                match reply.state() {
                    JobState::Done => return Ok(()),
                    JobState::Failed => return Err(("failed", reply.error)),
                    _ => {}
                }
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {}
            Err(status) => {
                return Err((
                    "accepted",
                    format!(
                        "cannot ask for the result: {:?}: {}",
                        status.code(),
                        status.message()
                    ),
                ));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(("accepted", "timed out waiting for the result".into()));
        }
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 3 / 2).min(Duration::from_millis(500));
    }
}

/// Bytes read ahead of the upload: enough for the content type, and the first chunk's start.
const HEAD_BYTES: usize = 64 << 10;

/// Opens a file to upload: its first bytes, the file positioned after them, and its size.
async fn open_upload(path: &Path) -> std::io::Result<(Bytes, tokio::fs::File, u64)> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
    let mut head = Vec::with_capacity(HEAD_BYTES);
    let mut file = file;
    (&mut file)
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .await?;
    Ok((Bytes::from(head), file, size))
}

/// The upload's chunks, read from `file` as the stream is polled (after `head`, the bytes already
/// read): a file is never held whole, so `send` over many large photos needs a chunk per upload in
/// flight, not a photo. A read error ends the stream and is left in `error` for the report.
fn file_chunks(
    head: Bytes,
    file: tokio::fs::File,
    error: Arc<std::sync::Mutex<Option<std::io::Error>>>,
) -> impl futures_util::Stream<Item = UploadRequest> {
    futures_util::stream::unfold(Some((head, file)), move |state| {
        let error = error.clone();
        async move {
            use tokio::io::AsyncReadExt;
            let (head, mut file) = state?;
            let mut chunk = bytes::BytesMut::with_capacity(CHUNK_BYTES);
            chunk.extend_from_slice(&head);
            while chunk.len() < CHUNK_BYTES {
                match (&mut file)
                    .take((CHUNK_BYTES - chunk.len()) as u64)
                    .read_buf(&mut chunk)
                    .await
                {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        *error.lock().unwrap() = Some(e);
                        return None;
                    }
                }
            }
            if chunk.is_empty() {
                return None;
            }
            let full = chunk.len() == CHUNK_BYTES;
            let message = UploadRequest {
                part: Some(upload_request::Part::Chunk(chunk.freeze())),
            };
            Some((message, full.then_some((Bytes::new(), file))))
        }
    })
}

fn guess_content_type(data: &[u8]) -> &'static str {
    cloudimg_engine::sniff(data).map_or("application/octet-stream", |f| f.mime_type())
}

fn print_record(record: &Record, json: bool, bar: &ProgressBar) {
    if json {
        if let Ok(line) = serde_json::to_string(record) {
            bar.suspend(|| {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            });
        }
        return;
    }
    bar.suspend(|| match (&record.error, record.status) {
        (Some(error), status) => eprintln!("{status}: {}: {error}", record.file),
        (None, status) => println!(
            "{status}\t{}\t{}\t{}",
            record.file,
            record.job_id.as_deref().unwrap_or("-"),
            record.key.as_deref().unwrap_or("-")
        ),
    });
}

fn summarize(records: &[Record], waited: bool, elapsed: Duration) {
    let count = |s: &str| records.iter().filter(|r| r.status == s).count();
    let failed = records.iter().filter(|r| r.is_failure(waited)).count();
    eprintln!(
        "sent {} images in {:.1}s: {} accepted, {} done, {} failed{}",
        records.len() - count("skipped"),
        elapsed.as_secs_f64(),
        count("accepted") + count("done"),
        count("done"),
        failed,
        match count("skipped") {
            0 => String::new(),
            n => format!("; {n} other files skipped (not images by extension)"),
        }
    );
}

/// Resolves `HOST:PORT` early so a typo is reported once, not once per file.
pub fn check_producer(producer: &str) -> Result<(), SendError> {
    if producer.starts_with("http://") || producer.starts_with("https://") {
        return Ok(());
    }
    if !is_host_port(producer) {
        return Err(SendError::Address(
            producer.to_owned(),
            "expected HOST:PORT or an http:// or https:// URL".into(),
        ));
    }
    producer
        .to_socket_addrs()
        .map(|_| ())
        .map_err(|e| SendError::Address(producer.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_seed_form_takes_a_trailing_host_port_as_the_producer() {
        let (paths, producer) = split_seed_form(&strings(&["photo.jpg", "localhost:50051"]));
        assert_eq!(paths, vec![PathBuf::from("photo.jpg")]);
        assert_eq!(producer.as_deref(), Some("localhost:50051"));
        let (paths, producer) = split_seed_form(&strings(&["a.jpg", "b.jpg", "10.0.0.5:50051"]));
        assert_eq!(paths.len(), 2);
        assert_eq!(producer.as_deref(), Some("10.0.0.5:50051"));
    }

    #[test]
    fn a_lone_argument_or_a_non_address_is_a_path() {
        assert_eq!(split_seed_form(&strings(&["host:50051"])).1, None);
        assert_eq!(split_seed_form(&strings(&["a.jpg", "b.jpg"])).1, None);
        assert_eq!(split_seed_form(&strings(&["a.jpg", "dir/x:1"])).1, None);
        assert_eq!(split_seed_form(&strings(&["a.jpg", "host:port"])).1, None);
    }

    #[test]
    fn producer_addresses_become_uris() {
        assert_eq!(producer_uri("127.0.0.1:50051"), "http://127.0.0.1:50051");
        assert_eq!(
            producer_uri("https://img.example:443"),
            "https://img.example:443"
        );
        assert!(check_producer("127.0.0.1:50051").is_ok());
        assert!(check_producer("nonsense").is_err());
    }

    #[tokio::test]
    async fn only_the_oldest_unfinished_jobs_poll() {
        let order = Arc::new(WaitOrder::new(2));
        let (a, b, c) = (order.join(), order.join(), order.join());
        assert!(order.in_window(a) && order.in_window(b) && !order.in_window(c));
        let waiting = {
            let order = order.clone();
            tokio::spawn(async move { order.turn(c).await })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !waiting.is_finished(),
            "the third job polled before its turn"
        );
        order.leave(b);
        tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the third job gets its turn when one ahead of it finishes")
            .unwrap();
    }

    #[test]
    fn json_lines_carry_exactly_the_contract_fields() {
        let r = Record::failed("a.jpg", "boom");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["error", "file", "job_id", "key", "status"]);
        assert_eq!(v["job_id"], serde_json::Value::Null);
    }
}
