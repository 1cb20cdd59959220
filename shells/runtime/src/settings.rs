//! Settings shared by the shells, in two layers (as ripgrep does): clap argument groups that read
//! flags with environment fallbacks, named as ARCHITECTURE.md's contracts say, and the typed
//! settings they turn into once, at the edge. Library code only ever sees the typed layer.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudimg_engine::Limits;

use crate::{Error, Result};

/// The broker's address when nothing is set.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The broker and the queue (producer and worker).
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Broker URL (`amqps://` for TLS), by default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// The seed's setting: the broker's host, used only when AMQP_URL is unset.
    #[arg(long, env = "RABBIT_HOST")]
    pub rabbit_host: Option<String>,
    /// The work queue; its dead-letter queue is `<queue>.dead`.
    #[arg(long, env = "CLOUDIMG_QUEUE", default_value = "images")]
    pub queue: String,
    /// `classic` or `quorum`. Producer and worker must agree (they declare the same queue).
    #[arg(long, env = "CLOUDIMG_QUEUE_TYPE", default_value = "classic")]
    pub queue_type: QueueType,
    /// A PEM file of CA certificates to trust for `amqps://`, besides the system's (a private
    /// broker CA; Amazon MQ's certificates chain to public roots and need none).
    #[arg(long, env = "CLOUDIMG_AMQP_CA")]
    pub amqp_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Where the broker is and which queue the jobs use.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// May hold a password: never print it without [`redact_url`].
    pub url: String,
    pub queue: String,
    pub queue_type: QueueType,
    /// Extra CA certificates (PEM) trusted for `amqps://`.
    pub ca_pem: Option<String>,
}

impl BrokerSettings {
    /// The settings for `url` and `queue`, classic queue, system CAs only.
    pub fn new(url: impl Into<String>, queue: impl Into<String>) -> BrokerSettings {
        BrokerSettings {
            url: url.into(),
            queue: queue.into(),
            queue_type: QueueType::Classic,
            ca_pem: None,
        }
    }
}

impl std::fmt::Debug for BrokerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSettings")
            .field("url", &redact_url(&self.url))
            .field("queue", &self.queue)
            .field("queue_type", &self.queue_type)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .finish()
    }
}

impl BrokerArgs {
    pub fn settings(&self) -> Result<BrokerSettings> {
        let url = match (&self.amqp_url, &self.rabbit_host) {
            (Some(url), _) if !url.is_empty() => url.clone(),
            (_, Some(host)) if !host.is_empty() => {
                format!("amqp://guest:guest@{host}:5672/%2f")
            }
            _ => DEFAULT_AMQP_URL.to_owned(),
        };
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Error::Config(format!(
                "AMQP_URL must start with amqp:// or amqps://, found {}",
                redact_url(&url)
            )));
        }
        if self.queue.is_empty() || self.queue.len() > 200 || self.queue.starts_with("amq.") {
            return Err(Error::Config(format!(
                "CLOUDIMG_QUEUE must be 1 to 200 characters and not start with `amq.`, found {:?}",
                self.queue
            )));
        }
        let ca_pem = match &self.amqp_ca {
            Some(path) if !path.as_os_str().is_empty() => {
                if !url.starts_with("amqps://") {
                    return Err(Error::Config(
                        "CLOUDIMG_AMQP_CA is set but AMQP_URL is not amqps://".into(),
                    ));
                }
                Some(read_pem(path, "CLOUDIMG_AMQP_CA")?)
            }
            _ => None,
        };
        Ok(BrokerSettings {
            url,
            queue: self.queue.clone(),
            queue_type: self.queue_type,
            ca_pem,
        })
    }
}

/// Reads a PEM file named by a setting, checking that it holds PEM at all.
pub fn read_pem(path: &Path, setting: &str) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{setting}: cannot read {}: {e}", path.display())))?;
    if !text.contains("-----BEGIN ") {
        return Err(Error::Config(format!(
            "{setting}: {} is not a PEM file (no `-----BEGIN` line)",
            path.display()
        )));
    }
    Ok(text)
}

/// A secret setting (a token): compared and sent, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// `None` for an unset or empty value.
    pub fn new(value: Option<&str>) -> Option<Secret> {
        value
            .filter(|v| !v.is_empty())
            .map(|v| Secret(v.to_owned()))
    }

    /// The value, for comparing or sending; never for logging.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What a long-running service (producer, worker) adds: metrics and the shutdown bound.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Address of the Prometheus endpoint (`GET /metrics`), for example `0.0.0.0:9464`; off when
    /// unset.
    #[arg(long, env = "CLOUDIMG_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// The longest a SIGTERM drain may take, in seconds. Past it the worker closes its link (the
    /// broker requeues what it still held) and the producer cuts the uploads still in flight
    /// (their clients get an error, never OK); both then exit 0.
    #[arg(long, env = "CLOUDIMG_DRAIN_SECONDS", default_value_t = 30)]
    pub drain_seconds: u64,
}

/// Metrics and shutdown, typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceSettings {
    pub metrics_listen: Option<SocketAddr>,
    pub drain: Duration,
}

impl ServiceArgs {
    pub fn settings(&self) -> ServiceSettings {
        ServiceSettings {
            metrics_listen: self.metrics_listen,
            drain: Duration::from_secs(self.drain_seconds),
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            metrics_listen: None,
            drain: Duration::from_secs(30),
        }
    }
}

/// The object store (worker; producer for staging and job status).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// S3 bucket for results, staged uploads and failure markers. The shells never create it.
    #[arg(long = "bucket", env = "BUCKET_NAME")]
    pub bucket: Option<String>,
    /// A local directory as the store, used when BUCKET_NAME is unset.
    #[arg(long = "out-dir", env = "CLOUDIMG_OUT_DIR")]
    pub out_dir: Option<PathBuf>,
    /// A custom S3 endpoint (S3-compatible servers); turns on path-style addressing.
    #[arg(long = "s3-endpoint", env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// S3 region; by default the SDK's chain, else us-east-1.
    #[arg(long = "s3-region", env = "AWS_REGION")]
    pub region: Option<String>,
    /// The longest one S3 request attempt may take (`30s`, `500ms`) before the SDK gives it up
    /// and retries (3 attempts); past them the shells see a transient store error. A stalled
    /// connection otherwise holds a job, or a `GetJob` call, for as long as TCP keeps it.
    #[arg(long = "s3-attempt-timeout", env = "CLOUDIMG_S3_ATTEMPT_TIMEOUT", default_value = "30s",
          value_parser = parse_duration)]
    pub attempt_timeout: Duration,
}

/// Which store to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSettings {
    S3 {
        bucket: String,
        endpoint: Option<String>,
        region: Option<String>,
        /// One request attempt's timeout (`CLOUDIMG_S3_ATTEMPT_TIMEOUT`).
        attempt_timeout: Duration,
    },
    Local {
        dir: PathBuf,
    },
    /// No store: the producer then cannot stage uploads or answer `GetJob`.
    None,
}

impl StoreArgs {
    pub fn settings(&self) -> StoreSettings {
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        match (nonempty(&self.bucket), &self.out_dir) {
            (Some(bucket), _) => StoreSettings::S3 {
                bucket,
                endpoint: nonempty(&self.endpoint),
                region: nonempty(&self.region),
                attempt_timeout: self.attempt_timeout,
            },
            (None, Some(dir)) if !dir.as_os_str().is_empty() => {
                StoreSettings::Local { dir: dir.clone() }
            }
            _ => StoreSettings::None,
        }
    }
}

/// Input limits shared by producer and worker.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Largest upload accepted, in bytes.
    #[arg(long, env = "CLOUDIMG_MAX_UPLOAD_BYTES", default_value_t = 64 << 20)]
    pub max_upload_bytes: u64,
    /// Largest image accepted, in pixels (width times height), checked from the header.
    #[arg(long, env = "CLOUDIMG_MAX_PIXELS", default_value_t = Limits::default().max_pixels)]
    pub max_pixels: u64,
    /// Most scans a JPEG may have, counted from its markers before decoding (each scan of a
    /// progressive file walks the whole image: thousands of them are a CPU bomb).
    #[arg(long, env = "CLOUDIMG_MAX_SCANS", default_value_t = Limits::default().max_scans)]
    pub max_scans: u32,
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_input_bytes: self.max_upload_bytes,
            max_pixels: self.max_pixels,
            max_scans: self.max_scans,
            ..Limits::default()
        }
    }
}

/// Parses a duration setting: a number of seconds (`30`, `0.5`) or a number with a unit (`500ms`,
/// `30s`, `2m`). Zero is refused: every duration setting is a bound, and a zero bound would refuse
/// everything.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "expected a duration such as 30, 30s, 500ms or 2m, found unit {other:?} in {text:?}"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration such as 30, 30s, 500ms or 2m, found {text:?}"))?;
    let duration = Duration::try_from_secs_f64(value * scale)
        .map_err(|e| format!("{text:?} is not a usable duration: {e}"))?;
    if duration.is_zero() {
        return Err(format!("a duration must be above zero, found {text:?}"));
    }
    Ok(duration)
}

/// Parses a byte count: a plain number, or one with a binary (`KiB`, `MiB`, `GiB`) or decimal (`KB`,
/// `MB`, `GB`) unit, as operators write memory sizes (`512MiB`).
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "expected a size such as 536870912, 512MiB or 2GiB, found unit {other:?} in {text:?}"
            ));
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("expected a size such as 536870912, 512MiB or 2GiB, found {text:?}"))
}

/// The memory this process may use: the cgroup v2 limit (`/sys/fs/cgroup/memory.max`), else the
/// cgroup v1 limit, else the machine's `MemTotal`; `None` when none of them can be read (not Linux).
/// Read once at startup, at the edge, to derive the default memory budgets.
pub fn memory_limit() -> Option<u64> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let machine = read("/proc/meminfo").and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    // "max" (v2) or a huge number (v1's "no limit") mean unlimited: the machine decides.
    let cgroup = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (cgroup, machine) {
        (Some(c), Some(m)) => Some(c.min(m)),
        (c, m) => c.or(m),
    }
}

/// Logging.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// `text` (for people) or `json` (one object per line, for log pipelines).
    #[arg(long, env = "CLOUDIMG_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Which events to log, as a tracing filter (`info`, `cloudimg_worker=debug,info`). lapin's
    /// own lines are off by default: it logs a broker-forced close as ERROR although the shells
    /// reconnect, and the shells log every link loss themselves (`info,lapin=warn` brings them
    /// back).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info,lapin=off")]
    pub log_filter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The URL with any password replaced by `***`, for logs and error messages.
///
/// The userinfo ends at the *last* `@` before any query or fragment, not at the first `/`:
/// operators paste passwords with `/`, `?`-free `@` or `:` in them unencoded, and a parser that
/// stops the authority at the first `/` would print such a password whole. When a path holds an
/// `@` this redacts too much, never too little.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let before_query = rest.find(['?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..before_query].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{head}{user}:***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(amqp_url: Option<&str>, rabbit_host: Option<&str>) -> BrokerArgs {
        BrokerArgs {
            amqp_url: amqp_url.map(str::to_owned),
            rabbit_host: rabbit_host.map(str::to_owned),
            queue: "images".into(),
            queue_type: QueueType::Classic,
            amqp_ca: None,
        }
    }

    #[test]
    fn amqp_url_wins_then_rabbit_host_then_the_default() {
        let s = broker(Some("amqps://u:p@mq:5671/v"), Some("ignored")).settings();
        assert_eq!(s.unwrap().url, "amqps://u:p@mq:5671/v");
        let s = broker(None, Some("rabbit")).settings().unwrap();
        assert_eq!(s.url, "amqp://guest:guest@rabbit:5672/%2f");
        let s = broker(Some(""), None).settings().unwrap();
        assert_eq!(s.url, DEFAULT_AMQP_URL);
        assert!(broker(Some("http://x"), None).settings().is_err());
    }

    #[test]
    fn bucket_wins_over_the_local_directory() {
        let args = StoreArgs {
            bucket: Some("b".into()),
            out_dir: Some("out".into()),
            endpoint: Some("http://127.0.0.1:9000".into()),
            region: None,
            attempt_timeout: Duration::from_secs(30),
        };
        assert!(
            matches!(args.settings(), StoreSettings::S3 { bucket, endpoint: Some(_), .. } if bucket == "b")
        );
        let args = StoreArgs {
            bucket: None,
            ..args
        };
        assert_eq!(args.settings(), StoreSettings::Local { dir: "out".into() });
    }

    #[test]
    fn durations_and_sizes_read_as_operators_write_them() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1 GB"), Ok(1_000_000_000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
        assert!(memory_limit().is_some_and(|m| m > 1 << 20));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact_url("amqps://u:p@ss@host/"), "amqps://u:***@host/");
        // A password with `/` (unencoded, as operators paste them) is still hidden.
        assert_eq!(
            redact_url("amqp://guest:se/cr/et@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u:a/b:c@d@mq/v?x=1"),
            "amqps://u:***@mq/v?x=1"
        );
        assert_eq!(redact_url("amqp://user@host/%2f"), "amqp://user@host/%2f");
        assert_eq!(redact_url("not a url"), "not a url");
        let settings = broker(Some("amqp://guest:secret@host:5672/%2f"), None)
            .settings()
            .unwrap();
        assert!(!format!("{settings:?}").contains("secret"));
        let token = Secret::new(Some("secret")).unwrap();
        assert!(!format!("{token:?}").contains("secret"));
        assert_eq!(token.expose(), "secret");
        assert_eq!(Secret::new(Some("")), None);
    }
}
