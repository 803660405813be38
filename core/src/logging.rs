//! Logs for programs built on derecho: one call installs a [`tracing`] subscriber.
//!
//! The library emits `tracing` events and never installs a subscriber itself (a library must
//! not). A program calls [`init`] once at the start of `main`:
//!
//! ```
//! derecho::logging::init();
//! ```
//!
//! * `RUST_LOG` chooses what is shown, with `tracing-subscriber`'s `EnvFilter` syntax
//!   (`RUST_LOG=debug`, `RUST_LOG=derecho=debug,info`); unset, the default is `info`: joins,
//!   views installed, failures suspected, restarts waiting and for whom, persistence errors,
//!   stops. Nothing on the data path logs at `info`.
//! * `DERECHO_LOG_FORMAT=json` writes one JSON object per line (for log shippers); `text`
//!   (the default) writes readable lines.
//! * Logs go to standard error, so a program's own output on standard output stays clean.
//!
//! A member's events carry the span `member{id=.. view=..}`: its node id and the view it has
//! installed.

use std::fmt;

/// The environment variable that chooses the format: `text` (default) or `json`.
pub const FORMAT_VAR: &str = "DERECHO_LOG_FORMAT";

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// Readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("{FORMAT_VAR}={other:?}: \"text\" or \"json\"")),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Text => "text",
            Format::Json => "json",
        })
    }
}

/// Installs the subscriber described in the [module documentation](self); a second call, or a
/// call after another subscriber was installed, changes nothing. A malformed `RUST_LOG` or
/// `DERECHO_LOG_FORMAT` is reported on standard error and the defaults are used instead (a
/// program is not stopped by its logging).
pub fn init() {
    init_default("info");
}

/// As [`init`], with `filter` instead of `info` when `RUST_LOG` is unset (`"warn"` for a
/// process whose standard error others read).
pub fn init_default(filter: &str) {
    let env = std::env::var("RUST_LOG").ok();
    init_with(Format::from_env(), Some(env.as_deref().unwrap_or(filter)));
}

impl Format {
    /// The format [`FORMAT_VAR`] names (text if unset; a bad value is reported and text used).
    pub fn from_env() -> Format {
        match std::env::var(FORMAT_VAR) {
            Ok(v) => v.parse().unwrap_or_else(|e| {
                eprintln!("derecho: {e}; logging as text");
                Format::Text
            }),
            Err(_) => Format::Text,
        }
    }
}

/// As [`init`], with the format and filter given (`None`: `info`).
pub fn init_with(format: Format, filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter.map(EnvFilter::try_new) {
        None => EnvFilter::new("info"),
        Some(Ok(f)) => f,
        Some(Err(e)) => {
            eprintln!("derecho: RUST_LOG is not a valid filter ({e}); logging at info");
            EnvFilter::new("info")
        }
    };
    // Colours only for a terminal, and never with NO_COLOR set (https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // `try_init` fails only when a subscriber is already installed: that one stays.
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().with_current_span(true).with_span_list(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_alike() {
        for f in [Format::Text, Format::Json] {
            assert_eq!(f.to_string().parse::<Format>(), Ok(f));
        }
        assert_eq!("JSON".parse::<Format>(), Ok(Format::Json));
        assert!("xml".parse::<Format>().unwrap_err().contains(FORMAT_VAR));
    }
}
