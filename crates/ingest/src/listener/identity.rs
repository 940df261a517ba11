//! Who a connection is (fleet.md §3): its client certificate's CN, else its username (checked
//! against the password file), else, where anonymous clients are allowed, its client id. And
//! the relay role, given in the password file, which may publish for every gateway.
//!
//! The password file has one user per line, `name:argon2-hash` or `name:argon2-hash:relay`
//! (`twinlake passwd` writes them); `#` starts a comment. It is read again when it changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};
use twinlake_model::Gateway;

use super::packet::{Connect, Refusal};
use crate::error::ListenerError;

/// What a connection may do.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    /// The gateway its plain `te/…` topics belong to, and the one prefix it may publish under.
    pub(crate) gateway: Gateway,
    /// May publish under every gateway's prefix (an upstream broker forwarding a fleet).
    pub(crate) relay: bool,
}

#[derive(Debug)]
struct User {
    hash: String,
    relay: bool,
}

#[derive(Debug, Default)]
struct Users {
    by_name: HashMap<String, User>,
    modified: Option<SystemTime>,
    /// SHA-256 of (stored hash, password) of passwords argon2 has verified: a fleet that
    /// reconnects at once costs one argon2 run per gateway only the first time.
    verified: HashMap<String, [u8; 32]>,
}

/// Decides who a connection is.
#[derive(Debug)]
pub(crate) struct Authenticator {
    password_file: Option<PathBuf>,
    users: RwLock<Users>,
}

/// A password hash for a password file line.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

impl Authenticator {
    pub(crate) fn new(password_file: Option<PathBuf>) -> Result<Self, ListenerError> {
        let users = match &password_file {
            Some(path) => read_users(path)?,
            None => Users::default(),
        };
        Ok(Self {
            password_file,
            users: RwLock::new(users),
        })
    }

    pub(crate) fn has_password_file(&self) -> bool {
        self.password_file.is_some()
    }

    /// Reads the password file again when it changed on disk (`force`: whatever its time).
    pub(crate) fn reload(&self, force: bool) {
        let Some(path) = &self.password_file else {
            return;
        };
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let unchanged = self.users.read().map_or(true, |u| u.modified == modified);
        if unchanged && !force {
            return;
        }
        match read_users(path) {
            Ok(users) => {
                tracing::info!(path = %path.display(), users = users.by_name.len(), "MQTT password file read");
                if let Ok(mut current) = self.users.write() {
                    *current = users;
                }
            }
            // The users read before stay in force: a half-written file must not lock all out.
            Err(error) => tracing::error!(%error, "MQTT password file not read again"),
        }
    }

    /// Who `connect` is, given the CN of its verified client certificate, if any, and whether
    /// its listener lets anonymous clients in.
    pub(crate) async fn identify(
        &self,
        connect: &Connect,
        certificate_cn: Option<String>,
        anonymous: bool,
    ) -> Result<Identity, Refusal> {
        let gateway = |id: &str| Gateway::parse(id).map_err(|_| Refusal::ClientId);
        if let Some(cn) = certificate_cn {
            return Ok(Identity {
                gateway: gateway(&cn)?,
                relay: false,
            });
        }
        let Some(username) = &connect.username else {
            if !anonymous {
                return Err(Refusal::NotAuthorized);
            }
            return Ok(Identity {
                gateway: gateway(&connect.client_id)?,
                relay: false,
            });
        };
        let stored = self.users.read().ok().and_then(|users| {
            let user = users.by_name.get(username)?;
            Some((user.hash.clone(), user.relay))
        });
        let Some((hash, relay)) = stored else {
            // Like Mosquitto with anonymous clients allowed: the name is taken as given.
            if !anonymous || self.has_password_file() {
                return Err(Refusal::Credentials);
            }
            return Ok(Identity {
                gateway: gateway(username)?,
                relay: false,
            });
        };
        let password = connect.password.clone().unwrap_or_default();
        if !self.verify(username, hash, password).await {
            return Err(Refusal::Credentials);
        }
        Ok(Identity {
            gateway: gateway(username)?,
            relay,
        })
    }

    async fn verify(&self, username: &str, hash: String, password: String) -> bool {
        let fingerprint: [u8; 32] = Sha256::new()
            .chain_update(hash.as_bytes())
            .chain_update([0])
            .chain_update(password.as_bytes())
            .finalize()
            .into();
        let known = self
            .users
            .read()
            .is_ok_and(|users| users.verified.get(username) == Some(&fingerprint));
        if known {
            return true;
        }
        // argon2 takes tens of milliseconds of CPU on purpose: not on the async threads.
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        if verified && let Ok(mut users) = self.users.write() {
            users.verified.insert(username.to_owned(), fingerprint);
        }
        verified
    }
}

fn read_users(path: &Path) -> Result<Users, ListenerError> {
    let invalid = |reason: String| ListenerError::PasswordFile {
        path: path.to_owned(),
        reason,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let mut by_name = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(name), Some(hash)) = (fields.next(), fields.next()) else {
            return Err(invalid(format!("line {}: expected name:hash", number + 1)));
        };
        let relay = match fields.next() {
            None => false,
            Some("relay") => true,
            Some(role) => {
                return Err(invalid(format!(
                    "line {}: unknown role {role:?} (the only role is relay)",
                    number + 1
                )));
            }
        };
        if PasswordHash::new(hash).is_err() {
            return Err(invalid(format!(
                "line {}: the hash of {name} is not an argon2 hash (make one with twinlake passwd)",
                number + 1
            )));
        }
        let user = User {
            hash: hash.to_owned(),
            relay,
        };
        by_name.insert(name.to_owned(), user);
    }
    Ok(Users {
        by_name,
        modified,
        verified: HashMap::new(),
    })
}

/// The CN of a client certificate (DER), the gateway it names.
pub(crate) fn common_name(certificate: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::packet::Version;

    fn connect(client_id: &str, login: Option<(&str, &str)>) -> Connect {
        Connect {
            version: Version::V311,
            client_id: client_id.to_owned(),
            clean_start: true,
            persistent: false,
            keep_alive: 60,
            username: login.map(|(user, _)| user.to_owned()),
            password: login.map(|(_, password)| password.to_owned()),
            will: None,
        }
    }

    async fn who(
        auth: &Authenticator,
        connect: Connect,
        cn: Option<String>,
        anonymous: bool,
    ) -> Result<Identity, Refusal> {
        auth.identify(&connect, cn, anonymous).await
    }

    #[tokio::test]
    async fn users_of_the_password_file_and_their_roles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwords");
        let lines = format!(
            "# gateways\ntruck042:{}\nupstream:{}:relay\n",
            hash_password("s3cret").unwrap(),
            hash_password("relay-pw").unwrap()
        );
        std::fs::write(&path, lines).unwrap();
        let auth = Authenticator::new(Some(path.clone())).unwrap();
        let login =
            |user, password| who(&auth, connect("any", Some((user, password))), None, false);
        let truck = login("truck042", "s3cret").await.unwrap();
        assert_eq!((truck.gateway.as_str(), truck.relay), ("truck042", false));
        // Again, now from the cache of verified passwords.
        assert!(login("truck042", "s3cret").await.is_ok());
        let wrong = login("truck042", "guess");
        assert_eq!(wrong.await.unwrap_err(), Refusal::Credentials);
        let unknown = who(&auth, connect("any", Some(("nobody", "x"))), None, true);
        assert_eq!(unknown.await.unwrap_err(), Refusal::Credentials);
        let relay = login("upstream", "relay-pw").await.unwrap();
        assert!(relay.relay);
        let anonymous = who(&auth, connect("truck7", None), None, false);
        assert_eq!(anonymous.await.unwrap_err(), Refusal::NotAuthorized);
        // A certificate names its gateway whatever else the client says.
        let certified = who(
            &auth,
            connect("any", None),
            Some("truck9".to_owned()),
            false,
        )
        .await
        .unwrap();
        assert_eq!(certified.gateway.as_str(), "truck9");
        // A changed file is read again; a broken one leaves the users as they were.
        std::fs::write(&path, "truck042:not-a-hash\n").unwrap();
        auth.reload(true);
        assert!(login("truck042", "s3cret").await.is_ok());
        std::fs::write(&path, "").unwrap();
        auth.reload(true);
        let gone = login("truck042", "s3cret");
        assert_eq!(gone.await.unwrap_err(), Refusal::Credentials);
    }

    #[tokio::test]
    async fn anonymous_clients_are_their_client_id_or_username() {
        let auth = Authenticator::new(None).unwrap();
        let by_id = who(&auth, connect("truck7", None), None, true).await;
        assert_eq!(by_id.unwrap().gateway.as_str(), "truck7");
        let named = who(&auth, connect("x", Some(("truck8", ""))), None, true).await;
        assert_eq!(named.unwrap().gateway.as_str(), "truck8");
        let bad_id = who(&auth, connect("a/b", None), None, true).await;
        assert_eq!(bad_id.unwrap_err(), Refusal::ClientId);
        let empty = who(&auth, connect("", None), None, true).await;
        assert_eq!(empty.unwrap_err(), Refusal::ClientId);
    }
}
