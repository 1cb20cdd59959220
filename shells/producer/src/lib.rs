//! `cloudimg-producer`: the gRPC front door.
//!
//! It validates every upload as early as it can (the declared size before receiving anything, the
//! magic bytes on the first chunk, the running size on every chunk, the header's dimensions with
//! `engine::probe` before publishing), holds the bytes of all uploads in flight within one memory
//! budget and every upload within its deadlines, stages uploads over `CLOUDIMG_STAGE_OVER_BYTES` in the store
//! (claim-check), publishes a persistent `ImageJob` on one long-lived, supervised broker connection
//! and answers OK only after the broker confirmed it. `GetJob` answers from the store.
#![forbid(unsafe_code)]

mod config;
mod service;

use std::sync::Arc;
use std::time::Duration;

use cloudimg_runtime::amqp::{Publisher, Topology};
use cloudimg_runtime::proto::image_service_server::ImageServiceServer;
use cloudimg_runtime::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Args, Config, Http2Settings, TlsIdentity, UploadBounds};
pub use service::ImageService;

/// The largest gRPC message the producer decodes. Clients send chunks of at most 1 MiB; 4 MiB is
/// gRPC's usual ceiling and leaves room for other clients' chunking.
pub const MAX_GRPC_MESSAGE: usize = 4 << 20;

/// Everything that stops the producer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Runtime(#[from] cloudimg_runtime::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
}

/// Binds `config.listen` and serves until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    serve(config, listener, shutdown).await
}

/// Serves on `listener` until `shutdown` is cancelled, then stops accepting, lets every upload in
/// flight finish (its publish confirmed or refused), and closes the broker connection.
pub async fn serve(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let store = Store::open(&config.store).await?.map(Arc::new);
    let topology = Topology::new(&config.broker);
    let link_stop = CancellationToken::new();
    let (publisher, supervisor) = Publisher::start(
        config.broker.clone(),
        format!("cloudimg-producer {addr}"),
        topology.clone(),
        config.confirm_timeout,
        link_stop.clone(),
    );
    {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            if !publisher.wait_connected(Duration::from_secs(5)).await {
                tracing::warn!("no broker link yet: uploads get UNAVAILABLE until it is up");
            }
        });
    }
    tracing::info!(
        %addr,
        queue = %topology.queue,
        store = %store.as_ref().map_or("none".into(), |s| s.describe()),
        max_upload_bytes = config.limits.max_input_bytes,
        stage_over_bytes = config.stage_over_bytes,
        upload_idle_timeout_ms = config.upload_bounds.idle.as_millis() as u64,
        upload_timeout_ms = config.upload_bounds.total.as_millis() as u64,
        max_streams = config.http2.max_streams,
        memory_budget = config.memory_budget,
        confirm_timeout_ms = config.confirm_timeout.as_millis() as u64,
        tls = config.tls.is_some(),
        token = config.token.is_some(),
        "producer listening"
    );

    // Health follows the broker link: NOT_SERVING while uploads would get UNAVAILABLE (no link,
    // or a link the broker blocked under a resource alarm), so a load balancer sends them to
    // another producer, and from the moment a drain begins.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_not_serving::<ImageServiceServer<ImageService>>()
        .await;
    {
        let mut publisher = publisher.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut state = publisher.state();
            loop {
                metrics::gauge!("cloudimg_broker_blocked").set(f64::from(state.blocked));
                if state.usable() {
                    health
                        .set_serving::<ImageServiceServer<ImageService>>()
                        .await;
                } else {
                    health
                        .set_not_serving::<ImageServiceServer<ImageService>>()
                        .await;
                }
                tokio::select! {
                    changed = publisher.link_changed() => match changed {
                        Some(now) => state = now,
                        None => break,
                    },
                    _ = shutdown.cancelled() => {
                        health
                            .set_not_serving::<ImageServiceServer<ImageService>>()
                            .await;
                        break;
                    }
                }
            }
        });
    }
    let drain = config.service.drain;
    let service = ImageService::new(&config, publisher, store, topology);
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        cloudimg_runtime::service::install_crypto_provider();
        let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(Error::Server)?;
    }
    let server = builder
        // Uploads are megabytes: HTTP/2's default 64 KiB windows would stall every stream on
        // window updates. 4 MiB per stream and 16 MiB per connection keep a chunk in flight.
        .initial_stream_window_size(Some(4 << 20))
        .initial_connection_window_size(Some(16 << 20))
        // 1 MiB frames instead of 16 KiB: a chunk arrives in one DATA frame, not sixty-four.
        .max_frame_size(Some(1 << 20))
        .http2_keepalive_interval(Some(config.http2.keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2.keepalive_timeout))
        .max_concurrent_streams(Some(config.http2.max_streams))
        .add_service(health_service)
        .add_service(
            ImageServiceServer::new(service)
                .max_decoding_message_size(MAX_GRPC_MESSAGE)
                .max_encoding_message_size(MAX_GRPC_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    // On shutdown tonic stops accepting connections, refuses new calls on open ones (GOAWAY) and
    // waits for the calls in flight: each upload ends published-and-OK or refused. A client that
    // stalls mid-upload would hold that forever, so the drain is bounded.
    tokio::pin!(server);
    let result = tokio::select! {
        result = &mut server => result,
        _ = async {
            shutdown.cancelled().await;
            tracing::info!(drain_seconds = drain.as_secs(), "shutdown: no new uploads; draining those in flight");
            tokio::time::sleep(drain).await;
        } => {
            tracing::warn!(
                drain_seconds = drain.as_secs(),
                "drain timed out: cutting the uploads still in flight (their clients get an error, never OK)"
            );
            Ok(())
        }
    };
    tracing::info!("producer drained; closing the broker link");
    link_stop.cancel();
    let _ = supervisor.await;
    result.map_err(Error::from)
}
