//! What two or more cloudimg shells share, and nothing else: the generated schema ([`proto`]), job
//! ids and object keys ([`jobs`]), settings read once at the edge ([`settings`]), logging
//! ([`telemetry`]), the shutdown signal ([`shutdown`]), retry pacing ([`backoff`]), memory budgets
//! ([`budget`]), the broker topology and publish ([`amqp`]) and link supervisor ([`link`]) (feature
//! `amqp`), the object stores ([`store`]; S3 with
//! feature `s3`) and the Prometheus endpoint and TLS provider of the services ([`service`], feature
//! `service`).
//!
//! The `cloudimg` CLI depends on this crate without features, so it compiles neither lapin nor the
//! AWS SDK.
#![forbid(unsafe_code)]

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod backoff;
pub mod budget;
mod error;
pub mod jobs;
#[cfg(feature = "amqp")]
pub mod link;
#[cfg(feature = "service")]
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;

pub use error::{Error, Result, StoreFailure};

/// The generated gRPC service and queue messages (`proto/cloudimg/v1/image_service.proto`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("cloudimg.v1");

    /// The full gRPC name of the service, as the health service reports it.
    pub const SERVICE_NAME: &str = "cloudimg.v1.ImageService";
}
