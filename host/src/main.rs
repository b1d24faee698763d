//! The `vigil` binary: parse the command line, run it, map errors to exit codes.
//!
//! Logging goes to stderr through `tracing`. `VIGIL_LOG` filters it (`EnvFilter` syntax, `info` for
//! the daemon and `error` for one-shot commands by default); `VIGIL_LOG_FORMAT` picks the format:
//! `text` (the default, human-readable) or `json` (one JSON object per line with `timestamp`,
//! `level`, `fields` and `target`, for journald and log shippers). Any other value is refused before
//! anything runs (exit code 2).

use clap::Parser;
use std::process::ExitCode;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The format `VIGIL_LOG_FORMAT` asks for: unset or empty means text.
fn log_format(value: Option<&std::ffi::OsStr>) -> Result<LogFormat, String> {
    let Some(value) = value else { return Ok(LogFormat::Text) };
    match value.to_str() {
        Some("") | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        _ => Err(format!("VIGIL_LOG_FORMAT={}: unknown log format; accepted values: text, json", value.to_string_lossy())),
    }
}

fn main() -> ExitCode {
    let cli = vigil::cli::Cli::parse();
    let format = match log_format(std::env::var_os("VIGIL_LOG_FORMAT").as_deref()) {
        Ok(format) => format,
        Err(message) => {
            eprintln!("vigil: {message}");
            return ExitCode::from(2);
        }
    };
    // The daemon logs what it does; one-shot commands print their result and only log errors.
    let default = if matches!(cli.command, vigil::cli::Command::Run { .. }) { "info" } else { "error" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIGIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }

    match vigil::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil: {e}");
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn log_format_values() {
        assert_eq!(log_format(None), Ok(LogFormat::Text));
        assert_eq!(log_format(Some(OsStr::new(""))), Ok(LogFormat::Text));
        assert_eq!(log_format(Some(OsStr::new("text"))), Ok(LogFormat::Text));
        assert_eq!(log_format(Some(OsStr::new("json"))), Ok(LogFormat::Json));
        let error = log_format(Some(OsStr::new("JSON "))).unwrap_err();
        assert!(error.contains("VIGIL_LOG_FORMAT") && error.contains("text, json"), "{error}");
    }
}
