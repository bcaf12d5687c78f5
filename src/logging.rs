//! Logging set-up: `tracing` to stderr, human-readable by default, JSON lines on request;
//! the filter comes from `OUTRIDER_LOG` (e.g. `debug`, `outrider::proxy=trace`).

use std::io::IsTerminal;

/// Installs the tracing subscriber for the process.
pub fn init(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTRIDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and container logs stay plain text.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
