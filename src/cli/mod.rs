//! The smaller subcommands, kept out of `main.rs` so it stays wiring.

pub mod gc;
pub mod logging;
pub mod remote;
pub mod serve;
pub mod settings;
pub mod token;
