//! Shared access signatures, the password a module presents to edgeHub, built exactly as
//! Microsoft's SDKs build them (and as edgeHub's `SharedAccessSignature` checks them): the
//! resource URI percent-encoded whole (`/` too), a newline, the expiry in Unix seconds; that
//! string signed with HMAC-SHA256 by the module's key (through the workload API, or with the
//! symmetric key of a development connection string); the signature percent-encoded in the
//! token.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long a token is valid (the SDKs' default).
pub const TOKEN_TTL_SECONDS: u64 = 3600;
/// Renew a token when this fraction of its life has passed.
pub const RENEW_AT_FRACTION: f64 = 0.8;

/// Percent-encode everything but RFC 3986's unreserved characters, as Python's
/// `urllib.parse.quote(text, safe="")` does.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The audience of a module's token: `{hub}/devices/{device}/modules/{module}`.
pub fn module_resource(hub_hostname: &str, device_id: &str, module_id: &str) -> String {
    format!("{hub_hostname}/devices/{device_id}/modules/{module_id}")
}

/// The exact text that is signed.
pub fn string_to_sign(resource: &str, expiry: u64) -> String {
    format!("{}\n{expiry}", quote(resource))
}

/// The token from a base64 signature of [`string_to_sign`].
pub fn token(resource: &str, expiry: u64, signature: &str) -> String {
    format!(
        "SharedAccessSignature sr={}&sig={}&se={expiry}",
        quote(resource),
        quote(signature)
    )
}

/// `base64(HMAC-SHA256(key, message))`, the symmetric-key signature.
pub fn sign_with_key(key: &[u8], message: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    /// The offline test vector of `iot-edge-protocol.md` §3.
    #[test]
    fn the_documented_test_vector() {
        let key = STANDARD
            .decode("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
            .unwrap();
        let resource = module_resource("myhub.azure-devices.net", "dev1", "mod1");
        assert_eq!(
            resource,
            "myhub.azure-devices.net/devices/dev1/modules/mod1"
        );
        let message = string_to_sign(&resource, 1_700_000_000);
        assert_eq!(
            message,
            "myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1\n1700000000"
        );
        assert_eq!(
            STANDARD.encode(message.as_bytes()),
            "bXlodWIuYXp1cmUtZGV2aWNlcy5uZXQlMkZkZXZpY2VzJTJGZGV2MSUyRm1vZHVsZXMlMkZtb2QxCjE3MDAwMDAwMDA="
        );
        let sig = sign_with_key(&key, message.as_bytes());
        assert_eq!(sig, "ZId0CjYzILqd7GGIpC99uIpjPK4fJTkYbrDAh8qYiy8=");
        assert_eq!(
            token(&resource, 1_700_000_000, &sig),
            "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev1%2Fmodules%2Fmod1&sig=ZId0CjYzILqd7GGIpC99uIpjPK4fJTkYbrDAh8qYiy8%3D&se=1700000000"
        );
    }

    #[test]
    fn quote_matches_python() {
        assert_eq!(quote("a b+c/d=e~f_g.h-i"), "a%20b%2Bc%2Fd%3De~f_g.h-i");
        assert_eq!(quote("é"), "%C3%A9");
    }
}
