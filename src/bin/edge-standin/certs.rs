//! The stand-in's key material, standing in for aziot's identity and certificate services: an
//! edge CA (the trust bundle), the edgeHub server certificate mosquitto presents, the module's
//! symmetric key (what `/sign` signs with) and the server certificates the workload API issues.
//! Everything lives in the stand-in's directory and is reused on restart, so a module that once
//! trusted the CA keeps trusting it.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Validity of the edge CA.
const CA_DAYS: u64 = 3650;
/// Validity of the edgeHub certificate and the longest a workload server certificate gets.
pub const MAX_SERVER_CERT_DAYS: u64 = 90;
const DAY: u64 = 86_400;
/// Certificates start this far in the past, to tolerate clock skew between containers.
const BACKDATE: u64 = 300;
const CA_NAME: &str = "connected-registry edge-standin CA";

/// The edge CA, able to sign certificates.
pub struct EdgeCa {
    /// The CA certificate as written to `ca.pem` (the trust bundle).
    pub pem: String,
    issuer: Certificate,
    key: KeyPair,
}

/// Everything the stand-in signs or encrypts with.
pub struct Material {
    pub ca: EdgeCa,
    /// The module identity's symmetric key (raw bytes).
    pub module_key: Vec<u8>,
    /// The same key, base64 (as in a connection string).
    pub module_key_b64: String,
}

/// A certificate issued by the workload API.
pub struct Issued {
    pub key_pem: String,
    /// The leaf alone.
    pub cert_pem: String,
    /// Leaf then CA.
    pub chain_pem: String,
    pub not_after: u64,
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Set a certificate's validity from Unix times (rcgen wants `time` values; this avoids naming
/// that crate).
fn set_validity(params: &mut CertificateParams, from: u64, to: u64) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + Duration::from_secs(from);
    params.not_after = epoch + Duration::from_secs(to);
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    dn.push(DnType::OrganizationName, "connected-registry");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Write `contents` to `path` with `mode`, replacing it atomically.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl EdgeCa {
    /// Load `ca.pem` + `ca.key` from `dir`, or create them.
    fn load_or_create(dir: &Path) -> Result<EdgeCa> {
        let pem_path = dir.join("ca.pem");
        let key_path = dir.join("ca.key");
        if key_path.exists() {
            let key_pem = std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?;
            let key = KeyPair::from_pem(&key_pem)
                .with_context(|| format!("{} is not a private key", key_path.display()))?;
            let pem = std::fs::read_to_string(&pem_path).with_context(|| {
                format!(
                    "{} exists but {} cannot be read; delete both to start over",
                    key_path.display(),
                    pem_path.display()
                )
            })?;
            check_ca_matches(&pem, &key, &pem_path)?;
            // Signing needs only the CA's name and key, which match the certificate on disk;
            // the in-memory copy is rebuilt from the same parameters.
            let issuer = ca_params().self_signed(&key)?;
            return Ok(EdgeCa { pem, issuer, key });
        }
        let key = KeyPair::generate()?;
        let mut params = ca_params();
        let now = now_unix();
        set_validity(&mut params, now - BACKDATE, now + CA_DAYS * DAY);
        let issuer = params.self_signed(&key)?;
        let pem = issuer.pem();
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&pem_path, pem.as_bytes(), 0o644)?;
        Ok(EdgeCa { pem, issuer, key })
    }

    /// Issue a server certificate: CN `common_name`, SANs `sans` (IP or DNS), serverAuth.
    pub fn issue_server(
        &self,
        common_name: &str,
        sans: &[String],
        not_after: u64,
    ) -> Result<Issued> {
        let mut unique: Vec<String> = Vec::new();
        for s in sans {
            if !unique.contains(s) {
                unique.push(s.clone());
            }
        }
        let mut params = CertificateParams::new(unique)
            .with_context(|| format!("invalid certificate name in {sans:?}"))?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, now_unix().saturating_sub(BACKDATE), not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let cert_pem = cert.pem();
        Ok(Issued {
            key_pem: key.serialize_pem(),
            chain_pem: format!("{cert_pem}{}", self.pem),
            cert_pem,
            not_after,
        })
    }
}

/// Refuse a `ca.pem` that does not hold `ca.key`'s public key.
fn check_ca_matches(pem: &str, key: &KeyPair, pem_path: &Path) -> Result<()> {
    let mut reader = pem.as_bytes();
    let der = match rustls_pemfile::certs(&mut reader).next() {
        Some(Ok(der)) => der,
        _ => bail!("{} holds no certificate", pem_path.display()),
    };
    let spki = key.public_key_der();
    if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        bail!(
            "{} does not belong to ca.key; delete both to start over",
            pem_path.display()
        );
    }
    Ok(())
}

impl Material {
    /// Load or create the CA and the module key in `dir`, and (re)issue the edgeHub server
    /// certificate for `gateway`, `localhost` and `127.0.0.1` (`edgehub.pem`/`edgehub.key`).
    /// The leaf is reissued on every start so a changed gateway hostname takes effect; trust
    /// rests on the CA, which is kept.
    pub fn load_or_create(dir: &Path, gateway: &str) -> Result<Material> {
        let ca = EdgeCa::load_or_create(dir)?;
        let key_path = dir.join("module.key");
        let module_key_b64 = if key_path.exists() {
            std::fs::read_to_string(&key_path)
                .with_context(|| format!("cannot read {}", key_path.display()))?
                .trim()
                .to_owned()
        } else {
            let mut key = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
            let b64 = base64::engine::general_purpose::STANDARD.encode(key);
            write_file(&key_path, format!("{b64}\n").as_bytes(), 0o600)?;
            b64
        };
        let module_key = base64::engine::general_purpose::STANDARD
            .decode(&module_key_b64)
            .with_context(|| format!("{} is not base64", key_path.display()))?;
        if module_key.is_empty() {
            bail!("{} is empty", key_path.display());
        }
        let sans = vec![
            gateway.to_owned(),
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ];
        let edgehub = ca.issue_server(gateway, &sans, now_unix() + MAX_SERVER_CERT_DAYS * DAY)?;
        write_file(&dir.join("edgehub.pem"), edgehub.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("edgehub.key"), edgehub.key_pem.as_bytes(), 0o600)?;
        Ok(Material {
            ca,
            module_key,
            module_key_b64,
        })
    }
}
