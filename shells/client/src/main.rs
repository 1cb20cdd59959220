use std::process::ExitCode;

use clap::Parser;
use cloudimg_client::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Convert(args) => match cloudimg_client::convert::run(&args.config()) {
            Ok(summary) if summary.succeeded() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        #[cfg(feature = "send")]
        Command::Send(args) => {
            let config = match args.config() {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::from(2);
                }
            };
            let waited = config.wait.is_some();
            let records = runtime.block_on(async {
                let shutdown = tokio_util::sync::CancellationToken::new();
                let on_signal = shutdown.clone();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        on_signal.cancel();
                    }
                });
                cloudimg_client::send::run(config, shutdown).await
            });
            if cloudimg_client::send::run_succeeded(&records, waited) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
