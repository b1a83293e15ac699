//! Token passwords: generated strong, stored only as salted argon2id hashes, and verified in
//! constant time — with each successful verification remembered (as a keyed MAC of the
//! password, never the password) so that the deliberately slow hash is paid once per token and
//! process, not on every pull.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHash};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Characters of a generated password (about 238 bits from 40 alphanumerics).
const GENERATED_LEN: usize = 40;

/// A new random password: 40 letters and digits from the operating system's generator.
pub fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(GENERATED_LEN);
    while out.len() < GENERATED_LEN {
        let mut byte = [0u8; 1];
        OsRng.fill_bytes(&mut byte);
        // Rejection sampling keeps every character equally likely.
        if (byte[0] as usize) < 256 - 256 % ALPHABET.len() {
            out.push(ALPHABET[byte[0] as usize % ALPHABET.len()] as char);
        }
    }
    out
}

/// The argon2id PHC string of `password`, with a fresh random salt.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// The slow check: does `password` match the PHC string `hash`? (Constant time inside argon2.)
pub fn verify(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash that matches no password, verified for unknown names so that a miss costs as much as
/// a wrong password and does not tell which names exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash(&generate()).unwrap_or_default())
}

/// Successful verifications, per token name: the hash they were made against and a MAC of the
/// password under a key that lives only in this process.
pub struct VerifiedCache {
    key: [u8; 32],
    entries: Mutex<HashMap<String, (String, [u8; 32])>>,
}

impl Default for VerifiedCache {
    fn default() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        VerifiedCache {
            key,
            entries: Mutex::new(HashMap::new()),
        }
    }
}

impl VerifiedCache {
    fn mac(&self, password: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// Whether `password` was verified before for `name` against this same `hash`.
    pub fn hit(&self, name: &str, hash: &str, password: &str) -> bool {
        let mac = self.mac(password);
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(name) {
            Some((h, m)) => h == hash && bool::from(m.ct_eq(&mac)),
            None => false,
        }
    }

    /// Remember a successful verification (one entry per token name, so the cache is bounded
    /// by the number of tokens).
    pub fn remember(&self, name: &str, hash: &str, password: &str) {
        let mac = self.mac(password);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.insert(name.to_owned(), (hash.to_owned(), mac));
    }

    /// Forget names that are no longer tokens.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_the_cache_only_hits_the_same_password_and_hash() {
        let password = generate();
        assert_eq!(password.len(), GENERATED_LEN);
        assert_ne!(password, generate());
        let h = hash(&password).unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(!h.contains(&password));
        assert!(verify(&h, &password));
        assert!(!verify(&h, "wrong"));
        assert!(!verify("garbage", &password));
        assert!(!verify(decoy_hash(), &password));
        let cache = VerifiedCache::default();
        assert!(!cache.hit("t", &h, &password));
        cache.remember("t", &h, &password);
        assert!(cache.hit("t", &h, &password));
        assert!(!cache.hit("t", &h, "wrong"));
        assert!(!cache.hit("t", "other-hash", &password));
        assert!(!cache.hit("u", &h, &password));
        cache.retain(|_| false);
        assert!(!cache.hit("t", &h, &password));
    }
}
