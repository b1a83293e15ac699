//! A child's node-to-node calls to a connected-registry parent: activation, deactivation and
//! pushing its status (DESIGN.md, "Node-to-node API"). Each is a small JSON request sent with the
//! sync token through the same transport, retries and bounds as every other parent request.

use reqwest::{Method, StatusCode};
use serde::Serialize;

use super::{error_detail, ParentClient, Req, SyncError, MAX_JSON_BYTES};

const PREFIX: &str = "/acr/connected-registry/v1/registries";

/// How the parent answered a gateway call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayAnswer {
    Accepted,
    /// The parent has no such endpoint: a plain OCI registry (no activation, no children).
    NotSupported,
    /// Refused with an OCI error code (`ALREADY_ACTIVATED`, `MODE_INCOMPATIBLE`, `DENIED`, …)
    /// and its message.
    Refused {
        code: String,
        message: String,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Activate<'a> {
    instance_id: &'a str,
    mode: &'a str,
    version: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Deactivate<'a> {
    instance_id: &'a str,
}

impl ParentClient {
    /// `POST …/registries/{name}/activate {instanceId, mode, version}`.
    pub async fn activate(
        &self,
        name: &str,
        instance_id: &str,
        mode: &str,
    ) -> Result<GatewayAnswer, SyncError> {
        let body = Activate {
            instance_id,
            mode,
            version: env!("CARGO_PKG_VERSION"),
        };
        self.gateway_call(Method::POST, &format!("{PREFIX}/{name}/activate"), &body)
            .await
    }

    /// `POST …/registries/{name}/deactivate {instanceId}`: let another instance activate.
    pub async fn deactivate(
        &self,
        name: &str,
        instance_id: &str,
    ) -> Result<GatewayAnswer, SyncError> {
        self.gateway_call(
            Method::POST,
            &format!("{PREFIX}/{name}/deactivate"),
            &Deactivate { instance_id },
        )
        .await
    }

    /// `PUT …/registries/{name}/status` with this node's status document.
    pub async fn report_status(
        &self,
        name: &str,
        status: &crate::status::Status,
    ) -> Result<GatewayAnswer, SyncError> {
        self.gateway_call(Method::PUT, &format!("{PREFIX}/{name}/status"), status)
            .await
    }

    async fn gateway_call(
        &self,
        method: Method,
        path: &str,
        body: &impl Serialize,
    ) -> Result<GatewayAnswer, SyncError> {
        let req = Req::new(method, self.url(path)?, "").json(body);
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        if f.status.is_success() {
            return Ok(GatewayAnswer::Accepted);
        }
        let code = oci_code(&f.body);
        // No such endpoint (a plain OCI registry, or a registry's generic 404/405): no gateway.
        let no_endpoint = matches!(code.as_deref(), None | Some("NOT_FOUND" | "UNSUPPORTED"));
        if matches!(
            f.status,
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
        ) && no_endpoint
        {
            return Ok(GatewayAnswer::NotSupported);
        }
        let code = code.unwrap_or_else(|| f.status.as_u16().to_string());
        Ok(refused(code, &f.body))
    }
}

fn refused(code: String, body: &[u8]) -> GatewayAnswer {
    let message = error_detail(body).trim_start_matches(": ").to_owned();
    GatewayAnswer::Refused { code, message }
}

/// The first OCI error code of a body.
fn oci_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["errors"][0]["code"].as_str().map(str::to_owned)
}
