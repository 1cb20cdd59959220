//! What the long-running services (producer and worker) share besides the broker and the store:
//! the Prometheus endpoint and the process-wide TLS crypto provider.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusBuilder;

use crate::{Error, Result};

/// Histogram buckets, in seconds, for every latency the services record: from a millisecond (a
/// publish confirm) to five minutes (queue lag under a backlog).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Serves every metric recorded from now on as Prometheus text on `http://addr/metrics` (any path
/// answers). Call once, in `main`, inside the tokio runtime: the listener is a task on it. Without
/// this call the `metrics` macros are no-ops, which is what in-process tests get.
pub fn install_metrics(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| {
            Error::Config(format!(
                "CLOUDIMG_METRICS_LISTEN: cannot serve on {addr}: {e}"
            ))
        })
}

/// Picks ring as the process's rustls provider. Both ring (tonic) and aws-lc-rs (the AWS SDK)
/// are compiled in, and rustls refuses to guess between two, so a TLS server config would panic
/// without this. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
