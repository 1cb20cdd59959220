//! The producer's settings: flags with environment fallbacks, turned once into [`Config`].

use std::net::SocketAddr;

use clap::Parser;
use cloudimg_engine::Limits;
use cloudimg_runtime::settings::{
    BrokerArgs, BrokerSettings, LimitArgs, LogArgs, StoreArgs, StoreSettings,
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
    pub token: Option<String>,
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
    /// Uploads larger than this many bytes are staged in the store (claim-check) instead of
    /// travelling through the broker. Capped at 15 MiB so no message reaches RabbitMQ 4's 16 MiB.
    #[arg(long, env = "CLOUDIMG_STAGE_OVER_BYTES", default_value_t = 8 << 20)]
    pub stage_over_bytes: u64,
    /// Bearer token every call must carry.
    #[arg(long, env = "CLOUDIMG_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub log: LogArgs,
}

impl Args {
    pub fn config(&self) -> Result<Config, cloudimg_runtime::Error> {
        Ok(Config {
            listen: self.listen,
            broker: self.broker.settings()?,
            store: self.store.settings(),
            limits: self.limits.limits(),
            stage_over_bytes: self
                .stage_over_bytes
                .min(cloudimg_runtime::amqp::MAX_MESSAGE_BYTES),
            token: self.token.clone().filter(|t| !t.is_empty()),
        })
    }
}
