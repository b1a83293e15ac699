//! Sync: keep the selected repositories of the parent here.
//!
//! (Engine in progress.)

pub mod client;
pub mod schedule;
pub mod select;
