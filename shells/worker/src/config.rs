//! The worker's settings: flags with environment fallbacks, turned once into [`Config`].

use clap::Parser;
use cloudimg_engine::Limits;
use cloudimg_runtime::settings::{
    BrokerArgs, BrokerSettings, LimitArgs, LogArgs, ServiceArgs, ServiceSettings, StoreArgs,
    StoreSettings, memory_limit,
};

/// What the worker needs, typed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerSettings,
    /// Where results and failure markers go (and staged uploads come from). Required.
    pub store: StoreSettings,
    /// Images converted at once: the engine pool's threads and the broker prefetch.
    pub concurrency: usize,
    pub limits: Limits,
    /// The longest one conversion may take before its job is dead-lettered with kind `timeout`.
    pub job_timeout: std::time::Duration,
    /// Bytes the jobs in flight may hold together, by their estimates (input, decoder, output).
    pub memory_budget: u64,
    /// Metrics endpoint and drain bound.
    pub service: ServiceSettings,
}

/// cloudimg-worker: converts queued images and writes the results to the store.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Images processed at once; the broker prefetch follows it (default: the number of cores).
    #[arg(long, env = "CLOUDIMG_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// The longest one conversion may take (`90s`, `2m`); past it the engine is stopped and the
    /// job dead-lettered with kind `timeout`. A 100-megapixel progressive JPEG takes about 2 s on
    /// one core; the default leaves room for slow cores and pathological but valid files.
    #[arg(long, env = "CLOUDIMG_JOB_TIMEOUT", default_value = "60s",
          value_parser = cloudimg_runtime::settings::parse_duration)]
    pub job_timeout: std::time::Duration,
    /// Bytes the jobs in flight may hold together (`512MiB`, `4GiB`), by each one's estimate from
    /// its header; a job waits for room, and one that needs more than all of it is dead-lettered
    /// with kind `over_budget`. Default: 75 % of the cgroup's memory limit, else of the machine's
    /// memory, else 1 GiB (the rest is the process itself, the allocator's slack and the system).
    #[arg(long, env = "CLOUDIMG_MEMORY_BUDGET",
          value_parser = cloudimg_runtime::settings::parse_bytes)]
    pub memory_budget: Option<u64>,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    pub fn config(&self) -> Result<Config, cloudimg_runtime::Error> {
        let store = self.store.settings();
        if store == StoreSettings::None {
            return Err(cloudimg_runtime::Error::Config(
                "the worker needs a store: set BUCKET_NAME (S3) or CLOUDIMG_OUT_DIR (a directory)"
                    .into(),
            ));
        }
        let concurrency = match self.concurrency {
            Some(0) | None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            Some(n) => n,
        }
        .min(u16::MAX as usize);
        Ok(Config {
            broker: self.broker.settings()?,
            store,
            concurrency,
            limits: self.limits.limits(),
            job_timeout: self.job_timeout,
            memory_budget: self
                .memory_budget
                .unwrap_or_else(|| memory_limit().map_or(1 << 30, |m| m / 4 * 3)),
            service: self.service.settings(),
        })
    }
}
