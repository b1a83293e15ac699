//! The smaller subcommands, kept out of `main.rs` so it stays wiring.

pub mod remote;
pub mod settings;
pub mod token;
