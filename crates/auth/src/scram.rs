//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL stores it: a verifier
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64) from which a server
//! checks a client's proof without ever holding anything a client could log in with.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// PostgreSQL's default, and what `twinlake passwd --scram` writes.
pub const SCRAM_ITERATIONS: u32 = 4096;
const PREFIX: &str = "SCRAM-SHA-256$";

/// What the server keeps of a SCRAM password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub iterations: u32,
    pub salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramKeys {
    /// Keys for `password` with a fresh random salt.
    pub fn new(password: &str) -> Result<Self, String> {
        let mut salt = vec![0; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no random numbers for a salt".to_owned())?;
        Ok(Self::derive(password, salt, SCRAM_ITERATIONS))
    }

    fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Self {
        let salted = salted_password(password, &salt, iterations);
        let client_key = sign(&salted, b"Client Key");
        Self {
            iterations,
            salt,
            stored_key: digest::digest(&digest::SHA256, &client_key)
                .as_ref()
                .to_vec(),
            server_key: sign(&salted, b"Server Key"),
        }
    }

    /// Keys for a user who never signs in: an unknown user goes through the same exchange and
    /// fails at its end, so that the exchange does not tell which users exist.
    pub fn unknown_user(username: &str) -> Self {
        let salt = digest::digest(&digest::SHA256, username.as_bytes()).as_ref()[..16].to_vec();
        let mut random = vec![0; 32];
        let _ = SystemRandom::new().fill(&mut random);
        Self {
            iterations: SCRAM_ITERATIONS,
            salt,
            stored_key: random.clone(),
            server_key: random,
        }
    }

    /// Reads a verifier; None when `text` is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let rest = text.strip_prefix(PREFIX)?;
        let (iterations, rest) = rest.split_once(':')?;
        let (salt, rest) = rest.split_once('$')?;
        let (stored_key, server_key) = rest.split_once(':')?;
        let keys = Self {
            iterations: iterations.parse().ok().filter(|i| *i > 0)?,
            salt: STANDARD.decode(salt).ok()?,
            stored_key: STANDARD.decode(stored_key).ok()?,
            server_key: STANDARD.decode(server_key).ok()?,
        };
        (keys.stored_key.len() == 32 && keys.server_key.len() == 32).then_some(keys)
    }

    /// The verifier's text, as PostgreSQL writes it.
    pub fn verifier(&self) -> String {
        format!(
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.stored_key),
            STANDARD.encode(&self.server_key)
        )
    }

    /// Whether `password` is the one these keys were made from (for password sign-ins such
    /// as HTTP basic authentication). Costs the PBKDF2 iterations.
    pub fn matches_password(&self, password: &str) -> bool {
        let other = Self::derive(password, self.salt.clone(), self.iterations);
        same(&other.stored_key, &self.stored_key)
    }

    /// Whether a client's proof over `auth_message` shows it knows the password.
    pub fn accepts_proof(&self, auth_message: &str, proof: &[u8]) -> bool {
        let signature = sign(&self.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return false;
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(p, s)| p ^ s).collect();
        let stored = digest::digest(&digest::SHA256, &client_key);
        same(stored.as_ref(), &self.stored_key)
    }

    /// The server's signature over `auth_message`: proof to the client that the server knows
    /// the password too.
    pub fn server_signature(&self, auth_message: &str) -> Vec<u8> {
        sign(&self.server_key, auth_message.as_bytes())
    }
}

fn salted_password(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0; digest::SHA256_OUTPUT_LEN];
    let iterations = std::num::NonZeroU32::new(iterations).unwrap_or(std::num::NonZeroU32::MIN);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

fn sign(key: &[u8], message: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, message).as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: user "user", password "pencil".
    #[test]
    fn the_rfc_exchange_verifies() {
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("base64");
        let keys = ScramKeys::derive("pencil", salt, 4096);
        let client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO";
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let client_final_bare = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        let auth_message = format!("{client_first_bare},{server_first},{client_final_bare}");
        let proof = STANDARD
            .decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .expect("base64");
        assert!(keys.accepts_proof(&auth_message, &proof));
        assert_eq!(
            STANDARD.encode(keys.server_signature(&auth_message)),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let mut wrong = proof.clone();
        wrong[0] ^= 1;
        assert!(!keys.accepts_proof(&auth_message, &wrong));
        assert!(keys.matches_password("pencil"));
        assert!(!keys.matches_password("pencil2"));
    }

    #[test]
    fn verifiers_read_back_and_bad_ones_are_refused() {
        let keys = ScramKeys::new("s3cret").expect("keys");
        let verifier = keys.verifier();
        assert!(verifier.starts_with("SCRAM-SHA-256$4096:"), "{verifier}");
        assert_eq!(ScramKeys::parse(&verifier), Some(keys));
        assert_eq!(ScramKeys::parse("SCRAM-SHA-256$0:c2FsdA==$AA==:AA=="), None);
        assert_eq!(ScramKeys::parse("$argon2id$v=19$m=19456"), None);
        assert!(!ScramKeys::unknown_user("x").matches_password(""));
    }
}
