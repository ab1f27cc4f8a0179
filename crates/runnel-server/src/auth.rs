//! API keys and roles.
//!
//! A key is a random secret a client sends as `Authorization: Bearer KEY`. The server
//! stores only each key's SHA-256, its name and its role. SHA-256 rather than a slow
//! password hash (argon2) because keys are generated, not chosen: 256 random bits cannot be
//! guessed however fast the hash, and a fast hash keeps the check of every request cheap.
//! Hashes are compared in constant time ([`subtle`]) against every configured key.
//!
//! Keys come from a TOML file (`--api-keys PATH`, `$RUNNEL_API_KEYS_FILE`):
//!
//! ```toml
//! [[key]]
//! name = "ci"            # logged with every change it makes
//! role = "operator"      # viewer | operator | admin
//! sha256 = "…64 hex digits: printf %s \"$KEY\" | sha256sum"
//! ```
//!
//! or inline from `$RUNNEL_API_KEYS`: `name:role:sha256,name:role:sha256`.
//!
//! With no key configured the server is open (every caller acts as `anonymous`, admin),
//! and `runnel serve` refuses to listen on anything but a loopback address.

use std::fmt;
use std::path::Path;

use axum::http::{header, HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::problem::Problem;

/// Environment variable naming the API keys file.
pub const ENV_API_KEYS_FILE: &str = "RUNNEL_API_KEYS_FILE";
/// Environment variable holding API keys inline (`name:role:sha256`, comma-separated).
pub const ENV_API_KEYS: &str = "RUNNEL_API_KEYS";
/// Longest key accepted in a request, in bytes (a generated key is 64 hex digits).
pub const PRESENTED_KEY_LEN_MAX: usize = 512;

/// What a key may do. Each role may do everything the roles below it may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read: streams, `$all`, subscriptions. (Admin routes, in a later slice, show a
    /// viewer counts and metadata but never message bodies.)
    Viewer,
    /// Change what can be undone or redone: append events; later retry, replay, rebuild.
    Operator,
    /// Destroy: later purge and delete.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = KeysError;
    fn from_str(s: &str) -> Result<Role, KeysError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(KeysError::Invalid(format!(
                "unknown role {other:?}; expected viewer, operator or admin"
            ))),
        }
    }
}

/// One configured key: its name, its role and the SHA-256 of the secret.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    pub role: Role,
    sha256: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not secret, but it has no business in logs either.
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// A key from the hex SHA-256 of its secret.
    pub fn from_hash(name: &str, role: Role, sha256_hex: &str) -> Result<ApiKey, KeysError> {
        if name.is_empty() || name.len() > 100 || name.chars().any(|c| c.is_control()) {
            return Err(KeysError::Invalid(format!(
                "key name {name:?} must be 1..=100 printable characters"
            )));
        }
        let sha256 = decode_sha256(sha256_hex).ok_or_else(|| {
            KeysError::Invalid(format!(
                "key {name:?}: sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)"
            ))
        })?;
        Ok(ApiKey {
            name: name.to_string(),
            role,
            sha256,
        })
    }

    /// A key from its secret (for tests and tools that generate keys).
    pub fn from_secret(name: &str, role: Role, secret: &str) -> ApiKey {
        ApiKey {
            name: name.to_string(),
            role,
            sha256: Sha256::digest(secret.as_bytes()).into(),
        }
    }
}

/// The lowercase hex SHA-256 of a secret: what a keys file stores.
pub fn hash_secret(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim().as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// Why the keys could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("cannot read the API keys file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("invalid API key configuration: {0}")]
    Invalid(String),
}

/// Every configured key. Empty: the server is open (loopback only).
#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    key: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    role: Role,
    sha256: String,
}

impl ApiKeys {
    /// No keys: an open server.
    pub fn none() -> ApiKeys {
        ApiKeys::default()
    }

    /// These keys; two keys of one name are refused (the name is who the audit log
    /// says acted).
    pub fn new(keys: Vec<ApiKey>) -> Result<ApiKeys, KeysError> {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.name == k.name) {
                return Err(KeysError::Invalid(format!(
                    "two keys are named {:?}; each needs its own name",
                    k.name
                )));
            }
            if keys[..i].iter().any(|o| o.sha256 == k.sha256) {
                return Err(KeysError::Invalid(format!(
                    "key {:?} has the same secret as another key",
                    k.name
                )));
            }
        }
        Ok(ApiKeys { keys })
    }

    /// Reads a TOML keys file (see the [module documentation](self)).
    pub fn from_file(path: &Path) -> Result<ApiKeys, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeysError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let file: KeysFile = toml::from_str(&text).map_err(|e| KeysError::File {
            path: path.display().to_string(),
            reason: e.message().replace('\n', " "),
        })?;
        let keys = file
            .key
            .iter()
            .map(|k| ApiKey::from_hash(&k.name, k.role, &k.sha256))
            .collect::<Result<Vec<_>, _>>()?;
        ApiKeys::new(keys)
    }

    /// Parses `name:role:sha256` entries separated by commas (`$RUNNEL_API_KEYS`).
    pub fn from_inline(text: &str) -> Result<ApiKeys, KeysError> {
        let keys = text
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                let parts: Vec<&str> = entry.split(':').collect();
                match parts.as_slice() {
                    [name, role, hash] => ApiKey::from_hash(name, role.parse()?, hash),
                    _ => Err(KeysError::Invalid(format!(
                        "{ENV_API_KEYS} entry {:?} is not name:role:sha256",
                        entry.split(':').next().unwrap_or("")
                    ))),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        ApiKeys::new(keys)
    }

    /// Adds the keys of `other` (a file and the environment together).
    pub fn merged(self, other: ApiKeys) -> Result<ApiKeys, KeysError> {
        let mut keys = self.keys;
        keys.extend(other.keys);
        ApiKeys::new(keys)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Who presents `secret`, if anyone. Every key is compared, in constant time each.
    fn find(&self, secret: &[u8]) -> Option<&ApiKey> {
        let presented: [u8; 32] = Sha256::digest(secret).into();
        let mut found = None;
        for key in &self.keys {
            if bool::from(key.sha256.ct_eq(&presented)) {
                found = Some(key);
            }
        }
        found
    }

    /// The caller a request's headers identify: `Ok(None)` for no key at all, a 401
    /// problem for a malformed or unknown one.
    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Option<Caller>, Problem> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let secret = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= PRESENTED_KEY_LEN_MAX)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer KEY`"))?;
        match self.find(secret.as_bytes()) {
            Some(key) => Ok(Some(Caller {
                name: key.name.clone(),
                role: key.role,
            })),
            None => Err(unauthorized("the API key is not one this server knows")),
        }
    }
}

/// Who is calling: the key's name and role (inserted into each authorised request's
/// extensions).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    /// The caller of an open server (no keys configured; loopback only).
    pub fn anonymous() -> Caller {
        Caller {
            name: "anonymous".into(),
            role: Role::Admin,
        }
    }
}

/// 401, with the challenge the client should answer.
pub(crate) fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "An API key is required",
        format!("{detail}; send `Authorization: Bearer KEY`"),
    )
}

/// 403.
pub(crate) fn forbidden(caller: &Caller, required: Role) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        "The API key's role is too low",
        format!(
            "key {:?} has role {}; this route needs {required} or higher",
            caller.name, caller.role
        ),
    )
    .with("required_role", required.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let keys = ApiKeys::new(vec![
            ApiKey::from_secret("a", Role::Viewer, "secret-a"),
            ApiKey::from_hash("b", Role::Admin, &hash_secret("secret-b")).unwrap(),
        ])
        .unwrap();
        assert_eq!(keys.find(b"secret-a").unwrap().name, "a");
        assert_eq!(keys.find(b"secret-b").unwrap().role, Role::Admin);
        assert!(keys.find(b"secret-c").is_none());
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Admin);
    }

    #[test]
    fn inline_and_file_configuration_is_checked() {
        let h = hash_secret("k");
        let keys = ApiKeys::from_inline(&format!("ci:operator:{h}")).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(ApiKeys::from_inline(&format!("ci:root:{h}")).is_err());
        assert!(ApiKeys::from_inline("ci:admin:abc").is_err());
        assert!(ApiKeys::from_inline(&format!("a:admin:{h},b:viewer:{h}")).is_err());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.toml");
        std::fs::write(
            &path,
            format!("[[key]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{h}\"\n"),
        )
        .unwrap();
        let keys = ApiKeys::from_file(&path).unwrap();
        assert_eq!(keys.find(b"k").unwrap().name, "ops");
        std::fs::write(&path, "[[key]]\nname = \"ops\"\nrole = \"admin\"\n").unwrap();
        assert!(ApiKeys::from_file(&path).is_err());
    }
}
