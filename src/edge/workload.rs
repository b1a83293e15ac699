//! The IoT Edge workload API: HTTP/1.1 over the unix socket the runtime mounts into every
//! module (`IOTEDGE_WORKLOADURI`). A module asks it to sign its SAS tokens with the module
//! identity's key (which never leaves the runtime), for the edge CA's trust bundle, and for a
//! server certificate. One connection per request, each bounded in time and size; a refusal is
//! an error carrying the runtime's `message`.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;

use super::sas::quote;
use super::EdgeError;

/// Upper bound of one workload request, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read (trust bundles hold a few certificates).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct WorkloadClient {
    socket: PathBuf,
    api_version: String,
    module_id: String,
    generation_id: String,
}

/// A server certificate issued by the edge CA.
#[derive(Debug, Clone)]
pub struct ServerCertificate {
    pub private_key_pem: String,
    pub certificate_pem: String,
    pub expiration: Option<chrono::DateTime<chrono::Utc>>,
}

impl WorkloadClient {
    /// `uri` as the runtime gives it: `unix:///var/run/iotedge/workload.sock`.
    pub fn new(
        uri: &str,
        api_version: &str,
        module_id: &str,
        generation_id: &str,
    ) -> Result<WorkloadClient, EdgeError> {
        let Some(path) = uri.strip_prefix("unix://") else {
            return Err(EdgeError::Environment(format!(
                "IOTEDGE_WORKLOADURI {uri:?} is not a unix:// socket URI"
            )));
        };
        Ok(WorkloadClient {
            socket: PathBuf::from(path),
            api_version: api_version.to_owned(),
            module_id: module_id.to_owned(),
            generation_id: generation_id.to_owned(),
        })
    }

    fn module_path(&self, tail: &str) -> String {
        format!(
            "/modules/{}/genid/{}/{tail}?api-version={}",
            quote(&self.module_id),
            quote(&self.generation_id),
            self.api_version
        )
    }

    /// HMAC-SHA256 of `data` with the module identity's key, base64.
    pub async fn sign(&self, data: &[u8]) -> Result<String, EdgeError> {
        #[derive(Deserialize)]
        struct Signed {
            digest: String,
        }
        let body = json!({
            "keyId": "primary",
            "algo": "HMACSHA256",
            "data": base64::engine::general_purpose::STANDARD.encode(data),
        });
        let signed: Signed = self
            .request("POST", &self.module_path("sign"), Some(body))
            .await?;
        Ok(signed.digest)
    }

    /// The edge CA's certificates (PEM text).
    pub async fn trust_bundle(&self) -> Result<String, EdgeError> {
        #[derive(Deserialize)]
        struct Bundle {
            certificate: String,
        }
        let path = format!("/trust-bundle?api-version={}", self.api_version);
        let bundle: Bundle = self.request("GET", &path, None).await?;
        Ok(bundle.certificate)
    }

    /// A server certificate for `common_name`, valid until `expiration` at most.
    pub async fn server_certificate(
        &self,
        common_name: &str,
        expiration: chrono::DateTime<chrono::Utc>,
    ) -> Result<ServerCertificate, EdgeError> {
        #[derive(Deserialize)]
        struct Key {
            bytes: String,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Issued {
            private_key: Key,
            certificate: String,
            expiration: Option<String>,
        }
        let body = json!({
            "commonName": common_name,
            "expiration": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, false),
        });
        let issued: Issued = self
            .request("POST", &self.module_path("certificate/server"), Some(body))
            .await?;
        Ok(ServerCertificate {
            private_key_pem: issued.private_key.bytes,
            certificate_pem: issued.certificate,
            expiration: issued
                .expiration
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e).ok())
                .map(|e| e.with_timezone(&chrono::Utc)),
        })
    }

    async fn request<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, EdgeError> {
        let what = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let call = async {
            let stream = tokio::net::UnixStream::connect(&self.socket)
                .await
                .map_err(|e| {
                    EdgeError::Workload(format!(
                        "cannot connect to the workload socket {}: {e}",
                        self.socket.display()
                    ))
                })?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| EdgeError::Workload(format!("{what}: {e}")))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let mut request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, "localhost");
            if !bytes.is_empty() {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| EdgeError::Workload(format!("{what}: {e}")))?;
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| EdgeError::Workload(format!("{what}: {e}")))?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| EdgeError::Workload(format!("{what}: reading the answer: {e}")))?
                .to_bytes();
            if !status.is_success() {
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
                return Err(EdgeError::Workload(format!(
                    "{what} answered {status}: {message}"
                )));
            }
            serde_json::from_slice(&body).map_err(|e| {
                EdgeError::Workload(format!("{what} answered JSON that is not as expected: {e}"))
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call)
            .await
            .map_err(|_| {
                EdgeError::Workload(format!("{what}: no answer within {REQUEST_TIMEOUT:?}"))
            })?
    }
}
