//! Every integration test, in one test binary: `cargo test --release --test integration`, or one
//! file's tests with its module name as the filter (`cargo test --release --test integration
//! sync::`). One binary because each test binary links the whole crate and its dependencies
//! again (a thin-LTO link) and compiles the harness in `common/` again: 33 binaries made a cold
//! build take ~25 min on 2 cores, one takes ~6. One binary also lets the short tests of one file
//! run beside the long ones of another.
//! The files are the modules below; `common/` is the one harness they all use.

mod common;

mod api;
mod auth;
mod auth_clients;
mod big_registry;
mod clients;
mod connections;
mod crash;
mod edge_module;
mod edge_standin;
mod feed;
mod feed_over_tls;
mod feed_stream;
mod gc;
mod health;
mod hierarchy;
mod hostile_parent;
mod hostile_parent_smaller;
mod hostile_requests;
mod images;
mod kubernetes;
mod log_secrets;
mod manifests;
mod memory;
mod metrics;
mod module_image;
mod parent_client;
mod polling;
mod scenarios;
mod storage;
mod store_race;
mod streaming;
mod sync;
mod upgrade;
mod upstream;
mod upstream_hostile;
