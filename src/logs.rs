//! Logs on stderr: for people (`log.format = "text"`) or for a log
//! shipper (`"json"`: one object per line with `timestamp`, `level`,
//! `target`, `message` and the event's fields), filtered by `log.level`
//! unless `RUST_LOG` says otherwise.

use std::io::IsTerminal;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `[log]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    pub format: LogFormat,
    /// A filter in `RUST_LOG`'s syntax: `info`, `lastclick=debug,info`, …
    pub level: String,
}

impl Log {
    /// The filter `level` names, or why it names none.
    pub fn filter(&self) -> Result<EnvFilter, String> {
        EnvFilter::try_new(&self.level).map_err(|e| e.to_string())
    }
}

/// Starts logging as `log` says; `RUST_LOG`, when set, wins over
/// `log.level`. Called once, after the configuration is read.
pub fn init(log: &Log) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| log.filter())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let done = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
    // Already set (a second call, a test harness): the first one stands.
    let _ = done;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_level_is_a_rust_log_filter_or_an_error() {
        let log = |level: &str| Log {
            format: LogFormat::Json,
            level: level.into(),
        };
        assert!(log("info").filter().is_ok());
        assert!(log("lastclick=debug,warn").filter().is_ok());
        assert!(log("lastclick=loud").filter().is_err());
        let bad = crate::config::Config::from_toml("[log]\nlevel = \"lastclick=loud\"\n");
        assert!(bad.unwrap_err().to_string().contains("log.level"));
        let bad = crate::config::Config::from_toml("[log]\nformat = \"xml\"\n");
        assert!(bad.unwrap_err().to_string().contains("xml"));
    }
}
