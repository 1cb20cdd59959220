//! The worker's settings: flags with environment fallbacks, turned once into [`Config`].

use clap::Parser;
use cloudimg_engine::Limits;
use cloudimg_runtime::settings::{
    BrokerArgs, BrokerSettings, LimitArgs, LogArgs, ServiceArgs, ServiceSettings, StoreArgs,
    StoreSettings,
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
            service: self.service.settings(),
        })
    }
}
