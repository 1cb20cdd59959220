use std::process::ExitCode;

use clap::Parser;
use cloudimg_producer::Args;
use cloudimg_runtime::{shutdown, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
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
