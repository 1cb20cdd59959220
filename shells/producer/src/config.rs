//! The producer's settings: flags with environment fallbacks, turned once into [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use cloudimg_engine::Limits;
use cloudimg_runtime::settings::{
    BrokerArgs, BrokerSettings, LimitArgs, LogArgs, Secret, ServiceArgs, ServiceSettings,
    StoreArgs, StoreSettings, memory_limit, parse_bytes, parse_duration, read_pem,
};

/// What the producer needs, typed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub broker: BrokerSettings,
    /// For staging large uploads and answering `GetJob`; `None` disables both.
    pub store: StoreSettings,
    /// `max_input_bytes` is the upload limit; `max_pixels` is checked from the header.
    pub limits: Limits,
    /// Uploads larger than this are staged in the store and travel as a reference.
    pub stage_over_bytes: u64,
    /// When set, every call must carry `authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// When set, gRPC is served over TLS only.
    pub tls: Option<TlsIdentity>,
    /// Metrics endpoint and drain bound.
    pub service: ServiceSettings,
    /// How long an upload may hold a stream.
    pub upload_bounds: UploadBounds,
    /// HTTP/2 settings that bound what one connection can hold open.
    pub http2: Http2Settings,
    /// Bytes that all uploads in flight may hold at once.
    pub memory_budget: u64,
    /// Longest wait for the broker's confirm of a job before UNAVAILABLE.
    pub confirm_timeout: Duration,
}

/// The share of the process's memory (the cgroup's limit, else the machine's) that uploads in
/// flight may hold when CLOUDIMG_MEMORY_BUDGET is unset: a quarter. A byte held can briefly
/// exist twice (the buffer's growth step copies it; an inline job is encoded into its own
/// message) and freed memory does not all return to the system at once, so twice the budget
/// plus the process's own ~30 MiB stays under half: the rest is left to the kernel's page cache
/// and to a worker sharing the host.
pub const MEMORY_BUDGET_SHARE: u64 = 4;

/// The budget when the memory cannot be read (not Linux): 1 GiB.
const FALLBACK_MEMORY_BUDGET: u64 = 1 << 30;

/// `CLOUDIMG_STAGE_OVER_BYTES` by default: 64 KiB. Every byte of an inline job is written by the
/// broker to disk and read back, and one broker (one Amazon MQ node) cannot grow with the fleet
/// while the store does; above this size a staged image costs the broker less than its bytes
/// would, and its three store requests cost less than the broker time they save
/// (docs/benchmarks.md, "Where the threshold lies").
pub const DEFAULT_STAGE_OVER_BYTES: u64 = 64 << 10;

/// Time bounds of one upload: without them a client that stops sending holds its stream, its
/// buffer and a drain slot forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadBounds {
    /// Longest wait for the next message of an upload (the first one included).
    pub idle: Duration,
    /// Longest an upload may take from its first byte to its last.
    pub total: Duration,
}

/// Per-connection HTTP/2 bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Settings {
    /// A PING is sent after this much silence on a connection...
    pub keepalive_interval: Duration,
    /// ...and the connection is closed when its answer takes longer than this: a peer that
    /// vanished (a NAT dropped, a host powered off) releases its streams instead of holding them
    /// until TCP gives up hours later.
    pub keepalive_timeout: Duration,
    /// Concurrent streams one connection may open (tonic lifts hyper's default cap entirely).
    pub max_streams: u32,
}

/// The server's certificate chain and private key, PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsIdentity { cert_pem: …, key_pem: *** }")
    }
}

/// cloudimg-producer: accepts uploads over gRPC and queues them for the workers.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "CLOUDIMG_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Uploads larger than this many bytes are staged in the store (claim-check) and the message
    /// carries only their key. 64 KiB by default, so nearly every photo is staged and the broker
    /// moves messages of a few hundred bytes instead of every image's bytes (docs/benchmarks.md
    /// has the measurement behind it). Capped at 15 MiB so no message reaches RabbitMQ 4's 16 MiB.
    #[arg(long, env = "CLOUDIMG_STAGE_OVER_BYTES", default_value_t = DEFAULT_STAGE_OVER_BYTES)]
    pub stage_over_bytes: u64,
    /// Bearer token every call must carry.
    #[arg(long, env = "CLOUDIMG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Certificate chain (PEM) to serve gRPC over TLS; needs CLOUDIMG_TLS_KEY.
    #[arg(long, env = "CLOUDIMG_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of CLOUDIMG_TLS_CERT.
    #[arg(long, env = "CLOUDIMG_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// TLS ends in front of the producer (a load balancer): a token is then accepted over plain
    /// gRPC. Without it a token and no TLS certificate is a configuration error.
    #[arg(long, env = "CLOUDIMG_TLS_TERMINATED")]
    pub tls_terminated: bool,
    /// An upload that sends nothing for this long is ended with DEADLINE_EXCEEDED (seconds, or
    /// with a unit: 500ms, 2m).
    #[arg(long, env = "CLOUDIMG_UPLOAD_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub upload_idle_timeout: Duration,
    /// An upload still receiving after this long is ended with DEADLINE_EXCEEDED. Ten minutes is a
    /// 64 MiB upload at 1 Mbit/s.
    #[arg(long, env = "CLOUDIMG_UPLOAD_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub upload_timeout: Duration,
    /// HTTP/2 keepalive: a PING after this much silence on a connection.
    #[arg(long, env = "CLOUDIMG_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive: the connection is closed when a PING is not answered within this.
    #[arg(long, env = "CLOUDIMG_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub keepalive_timeout: Duration,
    /// Concurrent upload streams per connection; a client opening more waits for one to end.
    /// 32 is four times the client's default concurrency.
    #[arg(long, env = "CLOUDIMG_MAX_STREAMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams: u32,
    /// Bytes all uploads in flight may hold at once (`536870912`, `512MiB`, `2GiB`); an upload
    /// that would take more gets RESOURCE_EXHAUSTED. By default a quarter of the cgroup's memory
    /// limit, else of the machine's memory.
    #[arg(long, env = "CLOUDIMG_MEMORY_BUDGET", value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,
    /// Longest wait for the broker's publisher confirm before the upload gets UNAVAILABLE. A
    /// staged upload is kept then: the broker may hold the job.
    #[arg(long, env = "CLOUDIMG_CONFIRM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub confirm_timeout: Duration,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    pub fn config(&self) -> Result<Config, cloudimg_runtime::Error> {
        let token = Secret::new(self.token.as_deref());
        let tls = self.tls()?;
        if token.is_some() && tls.is_none() && !self.tls_terminated {
            return Err(cloudimg_runtime::Error::Config(
                "CLOUDIMG_TOKEN is set but gRPC is served in plain text, so the token would travel \
                 in clear: serve TLS (CLOUDIMG_TLS_CERT and CLOUDIMG_TLS_KEY), or set \
                 CLOUDIMG_TLS_TERMINATED=true when TLS ends in front of the producer (a load \
                 balancer)"
                    .into(),
            ));
        }
        Ok(Config {
            listen: self.listen,
            broker: self.broker.settings()?,
            store: self.store.settings(),
            limits: self.limits.limits(),
            stage_over_bytes: self
                .stage_over_bytes
                .min(cloudimg_runtime::amqp::MAX_MESSAGE_BYTES),
            token,
            tls,
            service: self.service.settings(),
            upload_bounds: UploadBounds {
                idle: self.upload_idle_timeout,
                total: self.upload_timeout,
            },
            http2: Http2Settings {
                keepalive_interval: self.keepalive_interval,
                keepalive_timeout: self.keepalive_timeout,
                max_streams: self.max_streams,
            },
            memory_budget: self.memory_budget.unwrap_or_else(|| {
                memory_limit().map_or(FALLBACK_MEMORY_BUDGET, |m| m / MEMORY_BUDGET_SHARE)
            }),
            confirm_timeout: self.confirm_timeout,
        })
    }

    fn tls(&self) -> Result<Option<TlsIdentity>, cloudimg_runtime::Error> {
        let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        match (set(&self.tls_cert), set(&self.tls_key)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsIdentity {
                cert_pem: read_pem(&cert, "CLOUDIMG_TLS_CERT")?,
                key_pem: read_pem(&key, "CLOUDIMG_TLS_KEY")?,
            })),
            _ => Err(cloudimg_runtime::Error::Config(
                "CLOUDIMG_TLS_CERT and CLOUDIMG_TLS_KEY go together: set both or neither".into(),
            )),
        }
    }
}
