//! What a node knows about itself before any part has run: the status it starts with.

use std::net::SocketAddr;

use crate::config::Config;
use crate::status::{self, Status};

/// What the node knows about itself at start; the parts update the rest as they run.
pub fn initial_status(config: &Config, addr: SocketAddr) -> Status {
    let now = chrono::Utc::now();
    let is_root = config.parent.is_none();
    let mode = config.effective_mode().as_str();
    Status {
        name: config.name.clone().unwrap_or_else(|| "root".to_owned()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        mode: mode.to_owned(),
        activation: status::Activation {
            status: if is_root { "Active" } else { "Inactive" }.to_owned(),
            since: is_root.then_some(now),
        },
        connection_state: if is_root { "Online" } else { "Offline" }.to_owned(),
        last_activity_time: None,
        login_server: status::LoginServer {
            host: config
                .login_server
                .clone()
                .unwrap_or_else(|| addr.to_string()),
            tls: status::TlsStatus {
                status: if config.tls.is_some() {
                    "Enabled"
                } else {
                    "Disabled"
                }
                .to_owned(),
            },
        },
        parent: config.parent.as_ref().map(|p| status::ParentStatus {
            endpoint: p.endpoint.clone(),
            last_sync_time: None,
        }),
        ..Status::default()
    }
}
