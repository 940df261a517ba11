//! Who a connection is (fleet.md §3): its client certificate's CN, else its username (checked
//! against the password file), else, where anonymous clients are allowed, its client id. And
//! the relay role, given in the password file, which may publish for every gateway.
//!
//! The password file is the `auth` crate's (`name:argon2-hash[:relay]`), read again when it
//! changes.

use std::path::PathBuf;
use std::sync::Arc;

use twinlake_auth::PasswordFile;
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

/// Decides who a connection is.
#[derive(Debug)]
pub(crate) struct Authenticator {
    password_file: Option<Arc<PasswordFile>>,
}

impl Authenticator {
    pub(crate) fn new(password_file: Option<PathBuf>) -> Result<Self, ListenerError> {
        let password_file = password_file
            .map(|path| PasswordFile::open(path, "MQTT").map(Arc::new))
            .transpose()?;
        Ok(Self { password_file })
    }

    pub(crate) fn has_password_file(&self) -> bool {
        self.password_file.is_some()
    }

    pub(crate) fn password_file(&self) -> Option<Arc<PasswordFile>> {
        self.password_file.clone()
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
        let Some(file) = self.password_file.as_ref().filter(|f| f.knows(username)) else {
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
        let Some(user) = file.verify(username, &password).await else {
            return Err(Refusal::Credentials);
        };
        Ok(Identity {
            gateway: gateway(username)?,
            relay: user.relay,
        })
    }
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
            twinlake_auth::hash_password("s3cret").unwrap(),
            twinlake_auth::hash_password("relay-pw").unwrap()
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
        let file = auth.password_file().unwrap();
        std::fs::write(&path, "truck042:not-a-hash\n").unwrap();
        file.reload(true);
        assert!(login("truck042", "s3cret").await.is_ok());
        std::fs::write(&path, "").unwrap();
        file.reload(true);
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
