//! `cloudimg`, the user-facing command line: `convert` images locally with the engine, or `send`
//! them to a producer and optionally wait for the results.
#![forbid(unsafe_code)]

pub mod convert;
pub mod inputs;
#[cfg(feature = "send")]
pub mod send;

use std::path::PathBuf;
#[cfg(feature = "send")]
use std::time::Duration;

use clap::{Parser, Subcommand};
use cloudimg_engine::{OutputFormat, Quality};

/// cloudimg: grayscale images, locally or through the cloud pipeline.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Convert images to grayscale locally.
    Convert(ConvertArgs),
    /// Upload images to a producer (`cloudimg send IMAGE HOST:PORT` also works).
    #[cfg(feature = "send")]
    Send(SendArgs),
}

/// Output container, as typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Jpeg,
    Png,
}

impl From<FormatArg> for OutputFormat {
    fn from(f: FormatArg) -> OutputFormat {
        match f {
            FormatArg::Jpeg => OutputFormat::Jpeg,
            FormatArg::Png => OutputFormat::Png,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Images and folders (folders are searched recursively for jpg, jpeg and png files).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output folder.
    #[arg(long, short, default_value = "gray")]
    pub out: PathBuf,
    /// JPEG quality 1-100, or `source` to keep the source's quantization.
    #[arg(long, short, default_value = "85", value_parser = Quality::parse)]
    pub quality: Quality,
    /// Output format.
    #[arg(long, default_value = "jpeg")]
    pub format: FormatArg,
    /// Engine threads (default: one per core).
    #[arg(long, short = 'j', default_value_t = 0)]
    pub threads: usize,
}

impl ConvertArgs {
    pub fn config(&self) -> convert::ConvertConfig {
        convert::ConvertConfig {
            paths: self.paths.clone(),
            out_dir: self.out.clone(),
            options: cloudimg_engine::Options {
                quality: self.quality,
                format: self.format.into(),
                ..Default::default()
            },
            threads: self.threads,
        }
    }
}

#[cfg(feature = "send")]
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Images and folders; a last argument that is `HOST:PORT` and not a path names the producer.
    #[arg(required = true)]
    pub paths: Vec<String>,
    /// The producer: `HOST:PORT` or an `http://`/`https://` URL.
    #[arg(long, short, env = "CLOUDIMG_PRODUCER", default_value = send::DEFAULT_PRODUCER)]
    pub producer: String,
    /// Uploads in flight at once.
    #[arg(long, short = 'c', default_value_t = 8)]
    pub concurrency: usize,
    /// Wait until every job is done or failed.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits in all, in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// JSON Lines on stdout, one object per image.
    #[arg(long)]
    pub json: bool,
    /// JPEG quality 1-100, or `source`.
    #[arg(long, short, default_value = "85", value_parser = Quality::parse)]
    pub quality: Quality,
    /// Output format.
    #[arg(long, default_value = "jpeg")]
    pub format: FormatArg,
    /// Bearer token for the producer; sent only to an `https://` producer unless
    /// CLOUDIMG_TLS_TERMINATED is set.
    #[arg(long, env = "CLOUDIMG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TLS is added between this client and an `http://` producer address (a local
    /// TLS-originating proxy or a service-mesh sidecar), so the token may go to it. The same
    /// setting as the producer's, for the same promise: the token never crosses a network in clear.
    #[arg(long, env = "CLOUDIMG_TLS_TERMINATED")]
    pub tls_terminated: bool,
    /// A PEM file of CA certificates to trust for an `https://` producer, besides the system's
    /// (a private or test CA).
    #[arg(long = "ca-cert", env = "CLOUDIMG_TLS_CA")]
    pub ca_cert: Option<PathBuf>,
    /// Add `latency_ms` to each JSON line (for benchmarks).
    #[arg(long, hide = true)]
    pub latency: bool,
}

#[cfg(feature = "send")]
impl SendArgs {
    pub fn config(&self) -> Result<send::SendConfig, send::SendError> {
        let (paths, seed_producer) = send::split_seed_form(&self.paths);
        let producer = seed_producer.unwrap_or_else(|| self.producer.clone());
        send::check_producer(&producer)?;
        let token = self.token.clone().filter(|t| !t.is_empty());
        if token.is_some()
            && !send::producer_uri(&producer).starts_with("https://")
            && !self.tls_terminated
        {
            return Err(send::SendError::TokenInClear(producer));
        }
        let ca_pem = match self.ca_cert.as_ref().filter(|p| !p.as_os_str().is_empty()) {
            None => None,
            Some(path) => {
                if !producer.starts_with("https://") {
                    return Err(send::SendError::Tls(format!(
                        "--ca-cert (CLOUDIMG_TLS_CA) needs an https:// producer, found {producer:?}"
                    )));
                }
                let pem = cloudimg_runtime::settings::read_pem(path, "--ca-cert (CLOUDIMG_TLS_CA)")
                    .map_err(|e| send::SendError::Tls(e.to_string()))?;
                if !pem.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(send::SendError::Tls(format!(
                        "{} holds no PEM certificate",
                        path.display()
                    )));
                }
                Some(pem)
            }
        };
        Ok(send::SendConfig {
            paths,
            producer,
            concurrency: self.concurrency.max(1),
            wait: self.wait.then(|| Duration::from_secs(self.timeout)),
            json: self.json,
            options: cloudimg_runtime::jobs::wire_options(self.quality, self.format.into()),
            token,
            ca_pem,
            latency: self.latency,
        })
    }
}
