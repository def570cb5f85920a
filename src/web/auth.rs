//! API keys: `X-API-Key` → the caller's name and role.
//!
//! Keys are configured only as SHA-256 hashes. A presented key is hashed and compared with
//! every configured hash in constant time, without stopping at the first match, so neither
//! timing nor position tells anything about the configured keys.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ApiKeyEntry;
use crate::domain::{Actor, Role};

/// Every key starts with this, so leaked keys are easy to recognise and scan for.
pub const KEY_PREFIX: &str = "sk-sentinel-";

/// The configured keys, hashes decoded once at startup.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], String, Role)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing X-API-Key header")]
    Missing,
    #[error("invalid API key")]
    Invalid,
}

impl ApiKeys {
    pub fn from_config(entries: &[ApiKeyEntry]) -> Self {
        let keys = entries
            .iter()
            .filter_map(|entry| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(entry.sha256.to_ascii_lowercase(), &mut hash).ok()?;
                Some((hash, entry.name.clone(), entry.role))
            })
            .collect();
        ApiKeys { keys }
    }

    /// Who presents `key`, if anyone.
    pub fn authenticate(&self, key: Option<&str>) -> Result<Actor, AuthError> {
        let key = key
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Missing)?;
        let presented: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (hash, name, role) in &self.keys {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some((name, *role));
            }
        }
        found
            .map(|(name, role)| Actor::ApiKey {
                name: name.clone(),
                role,
            })
            .ok_or(AuthError::Invalid)
    }
}

/// A new random key and its SHA-256 in hex.
pub fn new_key() -> (String, String) {
    let mut secret = [0u8; 24];
    rand::rng().fill_bytes(&mut secret);
    let key = format!("{KEY_PREFIX}{}", hex::encode(secret));
    let hash = hex::encode(Sha256::digest(key.as_bytes()));
    (key, hash)
}

/// What `sentinel keys new` prints: the key alone on the first line, then the TOML entry.
pub fn new_key_output(role: Role, name: &str) -> (String, String) {
    let (key, hash) = new_key();
    let name = toml::Value::String(name.to_owned());
    let text =
        format!("{key}\n[[api_keys]]\nname = {name}\nrole = \"{role}\"\nsha256 = \"{hash}\"\n");
    (key, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_with(role: Role) -> (ApiKeys, String) {
        let (key, hash) = new_key();
        let keys = ApiKeys::from_config(&[ApiKeyEntry {
            name: "ci-bot".into(),
            role,
            sha256: hash,
        }]);
        (keys, key)
    }

    #[test]
    fn a_configured_key_authenticates_with_its_role() {
        let (keys, key) = keys_with(Role::Operator);
        assert_eq!(
            keys.authenticate(Some(&key)),
            Ok(Actor::ApiKey {
                name: "ci-bot".into(),
                role: Role::Operator
            })
        );
    }

    #[test]
    fn missing_wrong_or_altered_keys_are_refused() {
        let (keys, key) = keys_with(Role::Admin);
        assert_eq!(keys.authenticate(None), Err(AuthError::Missing));
        assert_eq!(keys.authenticate(Some("  ")), Err(AuthError::Missing));
        assert_eq!(
            keys.authenticate(Some("sk-sentinel-nope")),
            Err(AuthError::Invalid)
        );
        let mut altered = key.clone();
        altered.pop();
        altered.push('x');
        assert_eq!(keys.authenticate(Some(&altered)), Err(AuthError::Invalid));
        // The hash itself is not a key.
        let hash = hex::encode(Sha256::digest(key.as_bytes()));
        assert_eq!(keys.authenticate(Some(&hash)), Err(AuthError::Invalid));
    }

    #[test]
    fn new_key_output_is_the_key_then_toml_that_loads() {
        let (key, text) = new_key_output(Role::Operator, "ci \"bot\"");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(key.as_str()));
        assert!(key.starts_with(KEY_PREFIX));
        let toml_part: String = lines.map(|l| format!("{l}\n")).collect();
        assert!(toml_part.starts_with("[[api_keys]]\nname = "));
        #[derive(serde::Deserialize)]
        struct File {
            api_keys: Vec<ApiKeyEntry>,
        }
        let parsed: File = toml::from_str(&toml_part).unwrap();
        let keys = ApiKeys::from_config(&parsed.api_keys);
        assert_eq!(parsed.api_keys[0].name, "ci \"bot\"");
        assert_eq!(
            keys.authenticate(Some(&key)).unwrap().role(),
            Some(Role::Operator)
        );
    }
}
