//! A parent's view of its children (DESIGN.md, "Node-to-node API"): activation
//! (`POST …/registries/{name}/activate` and `…/deactivate`), the status each child pushes
//! (`PUT …/registries/{name}/status`) and the list of children with their connection state
//! (`GET …/registries`).
//!
//! Each call concerns one child and needs that child's gateway action (`config/write` to
//! change it, `config/read` to see it): a sync token can only speak for its own registry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::access::{check, Need};
use super::response::Reply;
use super::Api;
use crate::auth::{Decision, Identity};
use crate::config::{GatewayAction, Mode};
use crate::oci::{Error, ErrorCode, Result};
use crate::status::children::{ChildList, ChildSummary};
use crate::status::Status;
use crate::store::children::{ActivationRefused, ChildRecord};

/// A child that has not reported its status for this long is listed `Offline` (it reports
/// every 30 s, see `sync::activation`).
pub const OFFLINE_AFTER: Duration = Duration::from_secs(120);
/// The largest status document a child may push.
const MAX_STATUS_BYTES: usize = 256 * 1024;
/// The largest activation request.
const MAX_ACTIVATE_BYTES: usize = 16 * 1024;
/// Most children listed.
const MAX_CHILDREN: usize = 100_000;

/// What each child last said about itself, in memory.
#[derive(Default)]
pub(super) struct ChildReports {
    latest: Mutex<HashMap<String, (DateTime<Utc>, Status)>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActivateRequest {
    instance_id: String,
    mode: Mode,
    #[serde(default)]
    version: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeactivateRequest {
    instance_id: Option<String>,
}

fn valid_name(name: &str) -> Result<()> {
    if crate::config::is_registry_name(name) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::NameInvalid,
            format!(
                "{:?} is not a connected registry name (5 to 40 letters and digits)",
                super::short(name)
            ),
        ))
    }
}

pub(super) async fn activate(
    api: &Api,
    identity: &Identity,
    name: &str,
    req: Request<Incoming>,
) -> Result<Reply> {
    valid_name(name)?;
    check(identity, &Need::Gateway(name, GatewayAction::ConfigWrite))?;
    let body: ActivateRequest = super::read_json(req, api, MAX_ACTIVATE_BYTES).await?;
    if body.instance_id.is_empty() || body.instance_id.len() > 128 {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "instanceId must be 1 to 128 characters",
        ));
    }
    if api.current_mode() == Mode::ReadOnly && body.mode == Mode::ReadWrite {
        return Err(Error::new(
            ErrorCode::ModeIncompatible,
            format!("{name} is ReadWrite but this parent is ReadOnly: a ReadOnly parent accepts only ReadOnly children"),
        ));
    }
    match api
        .store
        .activate_child(name, &body.instance_id, body.mode.as_str(), &body.version)
        .await?
    {
        Ok(record) => {
            tracing::info!(child = name, instance = %record.instance_id, mode = %record.mode, "child activated");
            Ok(Reply::new(StatusCode::OK).json(&record))
        }
        Err(ActivationRefused::AlreadyActivated { instance_id }) => Err(Error::new(
            ErrorCode::AlreadyActivated,
            format!(
                "{name} is already active (instance {instance_id}): only one instance is supported at any time; run `connected-registry deactivate {name}` on the parent first"
            ),
        )),
    }
}

pub(super) async fn deactivate(
    api: &Api,
    identity: &Identity,
    name: &str,
    req: Request<Incoming>,
) -> Result<Reply> {
    valid_name(name)?;
    check(identity, &Need::Gateway(name, GatewayAction::ConfigWrite))?;
    let body: DeactivateRequest = super::read_json(req, api, MAX_ACTIVATE_BYTES)
        .await
        .unwrap_or_default();
    if api.store.child(name)?.is_none() {
        return Err(Error::new(
            ErrorCode::NameUnknown,
            format!("no child named {name} was ever activated here"),
        ));
    }
    let changed = api
        .store
        .deactivate_child(name, body.instance_id.as_deref())
        .await?;
    if changed {
        tracing::info!(child = name, "child deactivated");
    }
    Ok(Reply::new(StatusCode::OK)
        .json(&serde_json::json!({ "name": name, "deactivated": changed })))
}

pub(super) async fn put_status(
    api: &Api,
    identity: &Identity,
    name: &str,
    req: Request<Incoming>,
) -> Result<Reply> {
    valid_name(name)?;
    check(identity, &Need::Gateway(name, GatewayAction::ConfigWrite))?;
    let status: Status = super::read_json(req, api, MAX_STATUS_BYTES).await?;
    if !api.store.child(name)?.is_some_and(|c| c.active) {
        return Err(Error::new(
            ErrorCode::Denied,
            format!("{name} is not active here: activate before reporting status"),
        ));
    }
    let mut latest = api
        .children
        .latest
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    latest.insert(name.to_owned(), (Utc::now(), status));
    Ok(Reply::new(StatusCode::NO_CONTENT))
}

pub(super) fn list(api: &Api, identity: &Identity) -> Result<Reply> {
    let records = api.store.children(MAX_CHILDREN)?;
    let latest = api
        .children
        .latest
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Utc::now();
    let registries = records
        .into_iter()
        .filter(|c| identity.gateway(&c.name, GatewayAction::ConfigRead) == Decision::Allowed)
        .map(|c| {
            let report = latest.get(&c.name);
            summary(c, report, now)
        })
        .collect();
    Ok(Reply::new(StatusCode::OK).json(&ChildList { registries }))
}

/// How many active children's latest fresh report says they are `Online` or `Syncing` (the
/// `connected_children` gauge of `/metrics`).
pub(super) fn connected(api: &Api) -> Result<u64> {
    let records = api.store.children(MAX_CHILDREN)?;
    let latest = api
        .children
        .latest
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let now = Utc::now();
    let connected = records
        .iter()
        .map(|c| connection_state(c, latest.get(&c.name), now))
        .filter(|state| matches!(state.as_str(), "Online" | "Syncing"))
        .count();
    Ok(connected as u64)
}

/// What `report` says of `c`'s connection, or `Offline` when it is inactive or silent for
/// [`OFFLINE_AFTER`].
fn connection_state(
    c: &ChildRecord,
    report: Option<&(DateTime<Utc>, Status)>,
    now: DateTime<Utc>,
) -> String {
    let fresh =
        report.filter(|(at, _)| (now - *at).to_std().map_or(true, |age| age < OFFLINE_AFTER));
    match (c.active, fresh) {
        (true, Some((_, s))) => s.connection_state.clone(),
        _ => "Offline".to_owned(),
    }
}

fn summary(
    c: ChildRecord,
    report: Option<&(DateTime<Utc>, Status)>,
    now: DateTime<Utc>,
) -> ChildSummary {
    let connection_state = connection_state(&c, report, now);
    ChildSummary {
        mode: c.mode,
        activation: crate::status::Activation {
            status: if c.active { "Active" } else { "Inactive" }.to_owned(),
            since: Some(c.since),
        },
        connection_state,
        version: report.map_or(c.version, |(_, s)| s.version.clone()),
        login_server: report.map(|(_, s)| s.login_server.host.clone()),
        last_sync_time: report.and_then(|(_, s)| s.parent.as_ref().and_then(|p| p.last_sync_time)),
        last_status_time: report.map(|(at, _)| *at),
        name: c.name,
    }
}
