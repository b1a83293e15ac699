//! connected-registry: an on-premises OCI registry that keeps a chosen subset of repositories in
//! sync with a parent. See DESIGN.md for the shape: config → api → store, with sync and the IoT
//! Edge module client around them.

pub mod api;
pub mod auth;
pub mod config;
pub mod edge;
#[doc(hidden)]
pub mod fuzz;
pub mod metrics;
pub mod node;
pub mod oci;
pub mod server;
pub mod socket;
pub mod status;
pub mod store;
pub mod sync;
