//! Sync: keep the selected repositories of the parent here, through outages and inside sync
//! windows.
//!
//! [`client`] talks to the parent, [`select`] says what is wanted, [`schedule`] says when,
//! [`engine`] does one pass or applies one change event, and [`run`] loops: a full reconcile at
//! start, then the parent's change feed (long-poll) or, against a plain OCI parent, a reconcile
//! every few seconds — never outside a window. [`activation`] announces a named child to a
//! connected-registry parent before it syncs, and reports its status there. [`upstream`]
//! replays a ReadWrite node's local pushes and deletes at the parent.

pub mod activation;
pub mod client;
pub mod engine;
pub mod run;
pub mod setup;
pub mod upstream;

pub use engine::{PassSummary, SyncEngine, Trigger};
// When and what to sync are parsed with the configuration, which owns them.
pub use crate::config::{schedule, select};
