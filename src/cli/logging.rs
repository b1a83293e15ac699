//! Logging for every subcommand: a level from the configuration (ACR's names) or `RUST_LOG`,
//! text or JSON on stderr, and a handle that changes the level of a running node at once (a
//! new `logging.level` from the file or the module twin). Colour only on a terminal (never in
//! `docker logs`, journald or a file) and never with `NO_COLOR` set.

use std::io::IsTerminal;

use anyhow::Context;
use clap::ValueEnum;
use connected_registry::config::{self, Config};
use connected_registry::node::LogLevelSetter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer};

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn filter_for(level: &str) -> EnvFilter {
    EnvFilter::new(format!("warn,connected_registry={level}"))
}

/// ANSI colour only when stderr is a terminal and `NO_COLOR` (<https://no-color.org>) is not
/// set to something non-empty.
fn colour_wanted() -> bool {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// Install the subscriber. With `RUST_LOG` set, it rules and the level never changes;
/// otherwise the returned setter changes it live.
pub fn init(
    config: &Config,
    format: LogFormat,
    default_level: &str,
) -> anyhow::Result<Option<LogLevelSetter>> {
    let from_env = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => Some(EnvFilter::try_new(f).context("invalid RUST_LOG")?),
        _ => None,
    };
    let fixed = from_env.is_some();
    let filter = match from_env {
        Some(filter) => filter,
        None => match &config.logging {
            Some(l) => filter_for(config::tracing_filter(&l.level)?),
            None => filter_for(default_level),
        },
    };
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().boxed(),
    };
    tracing_subscriber::registry().with(filter).with(fmt).init();
    if fixed {
        return Ok(None);
    }
    Ok(Some(Box::new(move |level: &str| {
        let directive = config::tracing_filter(level).map_err(|e| e.to_string())?;
        handle
            .reload(filter_for(directive))
            .map_err(|e| e.to_string())?;
        tracing::info!(level, "log level changed");
        Ok(())
    })))
}
