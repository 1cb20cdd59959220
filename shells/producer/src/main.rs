use std::process::ExitCode;

use clap::Parser;
use cloudimg_producer::Args;
use cloudimg_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    keep_freed_buffers();
    let args = Args::parse();
    telemetry::init(&args.log);
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = config.service.metrics_listen
        && let Err(e) = cloudimg_runtime::service::install_metrics(addr)
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match cloudimg_producer::run(config, shutdown::on_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "producer stopped");
            ExitCode::FAILURE
        }
    }
}

/// Upload buffers are megabytes, allocated and freed for every upload. glibc maps each one fresh
/// and unmaps it when it is freed, so every upload's pages fault in and are zeroed again: about a
/// tenth of the producer's CPU (docs/benchmarks.md, "Producer"). Served from the heap and kept
/// when freed, the same pages serve the next upload; the resident memory then stays at its
/// high-water mark, which the memory budget bounds. (Uploads over 32 MiB, glibc's ceiling for
/// this threshold, are still mapped on their own.)
fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters; it is safe to call at any time.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}
