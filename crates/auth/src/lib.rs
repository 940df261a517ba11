//! Who may connect: users and their password hashes, read from a password file and checked
//! without costing a hash run at every connection.
//!
//! This crate owns the password file format, one user per line, `name:hash` or
//! `name:hash:relay` (`twinlake passwd` writes them; `#` starts a comment), where the hash is
//! argon2 or a SCRAM-SHA-256 verifier in PostgreSQL's format (which the PostgreSQL port needs
//! for SCRAM sign-ins, and which checks a password as well); reading it again when it changes,
//! and verifying passwords and SCRAM proofs. The MQTT endpoint and the query surfaces each use
//! a file of their own: gateways publish, analysts query. And the other credentials a listener
//! holds: its TLS certificates and key, read from PEM files (`pem`).
//!
//! It must not know what a user may do once in (topics, tables): its callers decide.

pub mod pem;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, PasswordHash, PasswordVerifier};
use sha2::{Digest, Sha256};

mod scram;

pub use scram::{SCRAM_ITERATIONS, ScramKeys};

/// A password file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("password file {path}: {reason}")]
pub struct PasswordFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// What the password file says of a user whose password was right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct User {
    /// The `relay` role: on the MQTT endpoint, may publish for every gateway.
    pub relay: bool,
}

#[derive(Debug)]
struct Entry {
    /// The hash as the file has it.
    hash: String,
    /// Set when the hash is a SCRAM verifier, else it is argon2.
    scram: Option<ScramKeys>,
    relay: bool,
}

#[derive(Debug, Default)]
struct Users {
    by_name: HashMap<String, Entry>,
    modified: Option<SystemTime>,
    /// SHA-256 of (stored hash, password) of passwords argon2 has verified: a fleet that
    /// reconnects at once costs one argon2 run per user only the first time.
    verified: HashMap<String, [u8; 32]>,
}

/// The users of one password file, read again when the file changes.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    /// What the file is for, in log lines ("MQTT", "query").
    purpose: &'static str,
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

impl PasswordFile {
    /// Reads the file; a file that cannot be read or has a bad line stops the caller's start.
    pub fn open(path: PathBuf, purpose: &'static str) -> Result<Self, PasswordFileError> {
        let users = read_users(&path)?;
        Ok(Self {
            path,
            purpose,
            users: RwLock::new(users),
        })
    }

    /// Reads the file again when it changed on disk (`force`: whatever its time). The users
    /// read before stay in force when the new file is bad: a half-written file must not lock
    /// everyone out.
    pub fn reload(&self, force: bool) {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let unchanged = self.users.read().map_or(true, |u| u.modified == modified);
        if unchanged && !force {
            return;
        }
        let purpose = self.purpose;
        match read_users(&self.path) {
            Ok(users) => {
                tracing::info!(path = %self.path.display(), users = users.by_name.len(), "{purpose} password file read");
                if let Ok(mut current) = self.users.write() {
                    *current = users;
                }
            }
            Err(error) => tracing::error!(%error, "{purpose} password file not read again"),
        }
    }

    /// Reads the file again whenever it changes (looked at every 2 s) and on SIGHUP, for as
    /// long as the task runs.
    pub async fn keep_current(self: Arc<Self>) {
        let hangup = tokio::signal::unix::SignalKind::hangup();
        let mut hangup = tokio::signal::unix::signal(hangup).ok();
        loop {
            let force = tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(2)) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            };
            self.reload(force);
        }
    }

    /// Whether the file names `username`.
    pub fn knows(&self, username: &str) -> bool {
        self.users
            .read()
            .is_ok_and(|users| users.by_name.contains_key(username))
    }

    /// The SCRAM keys of `username`, when the file has a SCRAM verifier for them.
    pub fn scram_keys(&self, username: &str) -> Option<ScramKeys> {
        let users = self.users.read().ok()?;
        users.by_name.get(username)?.scram.clone()
    }

    /// The user, when `password` is theirs.
    pub async fn verify(&self, username: &str, password: &str) -> Option<User> {
        let (hash, scram, relay) = self.users.read().ok().and_then(|users| {
            let entry = users.by_name.get(username)?;
            Some((entry.hash.clone(), entry.scram.clone(), entry.relay))
        })?;
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
            return Some(User { relay });
        }
        // argon2 and PBKDF2 take milliseconds of CPU on purpose: not on the async threads.
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || match scram {
            Some(keys) => keys.matches_password(&password),
            None => PasswordHash::new(&hash).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            }),
        })
        .await
        .unwrap_or(false);
        if !verified {
            return None;
        }
        if let Ok(mut users) = self.users.write() {
            users.verified.insert(username.to_owned(), fingerprint);
        }
        Some(User { relay })
    }
}

fn read_users(path: &Path) -> Result<Users, PasswordFileError> {
    let invalid = |reason: String| PasswordFileError {
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
        let Some((name, rest)) = line.split_once(':') else {
            return Err(invalid(format!("line {}: expected name:hash", number + 1)));
        };
        // A SCRAM verifier has two colons of its own.
        let hash_fields = if rest.starts_with("SCRAM-SHA-256$") {
            3
        } else {
            1
        };
        let mut fields = rest.splitn(hash_fields + 1, ':');
        let hash = fields
            .by_ref()
            .take(hash_fields)
            .collect::<Vec<_>>()
            .join(":");
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
        let scram = ScramKeys::parse(&hash);
        if scram.is_none() && PasswordHash::new(&hash).is_err() {
            return Err(invalid(format!(
                "line {}: the hash of {name} is neither argon2 nor a SCRAM-SHA-256 verifier \
                 (make one with twinlake passwd)",
                number + 1
            )));
        }
        let entry = Entry { hash, scram, relay };
        by_name.insert(name.to_owned(), entry);
    }
    Ok(Users {
        by_name,
        modified,
        verified: HashMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::{PasswordFile, ScramKeys, hash_password};

    #[tokio::test]
    async fn passwords_are_checked_and_bad_lines_refused() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("users");
        let hash = hash_password("s3cret").expect("a hash");
        std::fs::write(
            &path,
            format!(
                "# analysts\nana:{hash}\nbridge:{hash}:relay\nsally:{}\nsid:{}:relay\n",
                ScramKeys::new("pencil").expect("keys").verifier(),
                ScramKeys::new("pencil").expect("keys").verifier()
            ),
        )
        .expect("written");
        let file = PasswordFile::open(path.clone(), "query").expect("a good file");
        assert_eq!(
            file.verify("ana", "s3cret").await.map(|u| u.relay),
            Some(false)
        );
        assert_eq!(
            file.verify("bridge", "s3cret").await.map(|u| u.relay),
            Some(true)
        );
        // Twice: the second answer comes from the verified cache and must agree.
        assert!(file.verify("ana", "wrong").await.is_none());
        assert!(file.verify("ana", "wrong").await.is_none());
        assert!(file.verify("nobody", "s3cret").await.is_none());
        assert_eq!(
            file.verify("sally", "pencil").await.map(|u| u.relay),
            Some(false)
        );
        assert_eq!(
            file.verify("sid", "pencil").await.map(|u| u.relay),
            Some(true)
        );
        assert!(file.verify("sally", "s3cret").await.is_none());
        assert!(file.scram_keys("sally").is_some());
        assert!(file.scram_keys("ana").is_none());
        std::fs::write(&path, "ana:not-a-hash\n").expect("written");
        let error = PasswordFile::open(path, "query").expect_err("a bad hash");
        assert!(error.reason.contains("neither argon2 nor"), "{error}");
    }
}
