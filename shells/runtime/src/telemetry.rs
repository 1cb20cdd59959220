//! Logging: tracing to stderr, text for people or JSON lines for log pipelines.

use tracing_subscriber::EnvFilter;

use crate::settings::{LogArgs, LogFormat};

/// Installs the global subscriber. Call once, in `main`.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_filter).unwrap_or_else(|e| {
        eprintln!(
            "warning: ignoring log filter {:?}: {e}; using `info`",
            args.log_filter
        );
        EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if let Err(e) = result {
        eprintln!("warning: logging already initialised: {e}");
    }
}
