//! The listener's certificate from the IoT Edge workload API (`tls.fromWorkload`): issued for
//! the node's host name by the edge CA — which every device of the hierarchy already trusts —
//! and asked for again when 80 % of its life has passed, so it never expires while serving.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::workload::WorkloadClient;
use super::EdgeError;
use crate::server::{certified_key, RenewableCert};

/// The validity asked for (the runtime may give less).
const ASKED_VALIDITY_DAYS: i64 = 30;
/// Renew when this fraction of the certificate's life has passed.
const RENEW_AT_FRACTION: f64 = 0.8;
/// Pause before asking again after a failed renewal.
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// One certificate from the workload API, with when to renew it.
async fn issue(
    workload: &WorkloadClient,
    common_name: &str,
) -> Result<(Arc<rustls::sign::CertifiedKey>, DateTime<Utc>), EdgeError> {
    let issued_at = Utc::now();
    let asked = issued_at + chrono::Duration::days(ASKED_VALIDITY_DAYS);
    let issued = workload.server_certificate(common_name, asked).await?;
    let certified = certified_key(
        issued.certificate_pem.as_bytes(),
        issued.private_key_pem.as_bytes(),
    )
    .map_err(|e| EdgeError::Workload(format!("the issued server certificate: {e:#}")))?;
    let expires = issued.expiration.unwrap_or(asked).min(asked);
    Ok((certified, renewal_time(issued_at, expires)))
}

/// When a certificate valid from `issued_at` to `expires` is renewed.
pub fn renewal_time(issued_at: DateTime<Utc>, expires: DateTime<Utc>) -> DateTime<Utc> {
    let life = (expires - issued_at).num_milliseconds().max(0) as f64;
    issued_at + chrono::Duration::milliseconds((life * RENEW_AT_FRACTION) as i64)
}

/// The first certificate (asked a few times: the runtime may be starting too), and a task that
/// renews it until the process ends.
pub async fn start(
    workload: WorkloadClient,
    common_name: String,
) -> Result<Arc<RenewableCert>, EdgeError> {
    let mut attempt = 0;
    let (certified, mut renew_at) = loop {
        attempt += 1;
        match issue(&workload, &common_name).await {
            Ok(first) => break first,
            Err(e) if attempt >= 5 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "no server certificate from the workload API yet");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    tracing::info!(%common_name, %renew_at, "serving TLS with a certificate from the IoT Edge workload API");
    let cert = Arc::new(RenewableCert::new(certified));
    let renewing = cert.clone();
    tokio::spawn(async move {
        loop {
            let wait = (renew_at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::sleep(wait).await;
            match issue(&workload, &common_name).await {
                Ok((certified, next)) => {
                    renewing.replace(certified);
                    renew_at = next;
                    tracing::info!(%common_name, %renew_at, "server certificate renewed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "renewing the server certificate failed; retrying");
                    renew_at =
                        Utc::now() + chrono::Duration::from_std(RETRY_AFTER).unwrap_or_default();
                }
            }
        }
    });
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_four_fifths_of_the_life() {
        let issued = Utc::now();
        let renew = renewal_time(issued, issued + chrono::Duration::days(10));
        assert_eq!((renew - issued).num_hours(), 192);
        assert_eq!(
            renewal_time(issued, issued - chrono::Duration::days(1)),
            issued
        );
    }
}
