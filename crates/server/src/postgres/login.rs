//! Signing in on the PostgreSQL port: SCRAM-SHA-256 for users whose password file line is a
//! SCRAM verifier, a cleartext password over TLS for users with an argon2 hash, nobody else;
//! or anyone when the port has no users (loopback, or allowed explicitly).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, ConnectionManager, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, PasswordMessageFamily};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::Mutex;
use twinlake_auth::{PasswordFile, ScramKeys};

use crate::postgres::statements::sql_error;

const SCRAM: &str = "SCRAM-SHA-256";

/// What the whole port shares for signing in.
#[derive(Debug)]
pub(crate) struct Gatekeeper {
    /// None: anyone may sign in.
    pub(crate) users: Option<Arc<PasswordFile>>,
    /// Every connection must be encrypted.
    pub(crate) require_tls: bool,
    pub(crate) parameters: DefaultServerParameterProvider,
    pub(crate) connections: Arc<ConnectionManager>,
    pub(crate) pids: RandomPidSecretKeyGenerator,
}

/// Where one connection's sign-in stands.
#[derive(Debug, Default)]
enum Step {
    #[default]
    Started,
    Cleartext,
    ScramAsked(ScramKeys),
    ScramChallenged {
        keys: ScramKeys,
        nonce: String,
        /// client-first-message-bare "," server-first-message
        exchanged: String,
        /// What the client's channel binding (`c=`) must be: its GS2 header.
        binding: String,
    },
}

/// The sign-in of one connection.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) gatekeeper: Arc<Gatekeeper>,
    step: Mutex<Step>,
}

impl Login {
    pub(crate) fn new(gatekeeper: Arc<Gatekeeper>) -> Self {
        Self {
            gatekeeper,
            step: Mutex::new(Step::Started),
        }
    }
}

/// PostgreSQL's own words, whichever way the sign-in failed.
fn refused(user: &str) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_owned(),
        "28P01".to_owned(),
        format!("password authentication failed for user \"{user}\""),
    )))
}

fn protocol_error(message: &str) -> PgWireError {
    sql_error("08P01", format!("SCRAM: {message}"))
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        match message {
            PgWireFrontendMessage::Startup(startup) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                if self.gatekeeper.require_tls && !client.is_secure() {
                    return Err(sql_error(
                        "28000",
                        "this server accepts encrypted connections only (sslmode=require)"
                            .to_owned(),
                    ));
                }
                let Some(users) = &self.gatekeeper.users else {
                    return self.welcome(client).await;
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                let step = match users.scram_keys(&user) {
                    Some(keys) => Step::ScramAsked(keys),
                    None if users.knows(&user) && client.is_secure() => Step::Cleartext,
                    // An argon2 user on plaintext cannot sign in either, and must not be
                    // told apart from an unknown one.
                    None => Step::ScramAsked(ScramKeys::unknown_user(&user)),
                };
                let ask = match step {
                    Step::Cleartext => Authentication::CleartextPassword,
                    _ => Authentication::SASL(vec![SCRAM.to_owned()]),
                };
                *self.step.lock().await = step;
                client
                    .send(PgWireBackendMessage::Authentication(ask))
                    .await?;
                Ok(())
            }
            PgWireFrontendMessage::PasswordMessageFamily(answer) => {
                let step = std::mem::take(&mut *self.step.lock().await);
                match step {
                    Step::Started => Err(protocol_error("a password before the startup message")),
                    Step::Cleartext => self.check_cleartext(client, &user, answer).await,
                    Step::ScramAsked(keys) => {
                        let (challenge, server_first) = challenge(keys, answer)?;
                        *self.step.lock().await = challenge;
                        client
                            .send(PgWireBackendMessage::Authentication(
                                Authentication::SASLContinue(server_first.into()),
                            ))
                            .await?;
                        Ok(())
                    }
                    Step::ScramChallenged {
                        keys,
                        nonce,
                        exchanged,
                        binding,
                    } => {
                        let response = answer.into_sasl_response()?;
                        let client_final = std::str::from_utf8(&response.data)
                            .map_err(|_| protocol_error("the final message is not UTF-8"))?;
                        let signature =
                            check_proof(&keys, &nonce, &exchanged, &binding, client_final)
                                .ok_or_else(|| refused(&user))?;
                        let last = format!("v={}", STANDARD.encode(signature));
                        client
                            .feed(PgWireBackendMessage::Authentication(
                                Authentication::SASLFinal(last.into()),
                            ))
                            .await?;
                        self.welcome(client).await
                    }
                }
            }
            _ => Ok(()),
        }
    }
}

impl Login {
    async fn check_cleartext<C>(
        &self,
        client: &mut C,
        user: &str,
        answer: PasswordMessageFamily,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let password = answer.into_password()?.password;
        let users = self
            .gatekeeper
            .users
            .as_ref()
            .ok_or_else(|| refused(user))?;
        if users.verify(user, &password).await.is_none() {
            return Err(refused(user));
        }
        self.welcome(client).await
    }

    /// AuthenticationOk and what follows; the connection can be cancelled from here on.
    async fn welcome<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, secret) = self.gatekeeper.pids.generate(client);
        client.set_pid_and_secret_key(pid, secret.clone());
        let (handle, guard) = self.gatekeeper.connections.register(pid, secret);
        client.session_extensions().insert(handle);
        client.session_extensions().insert(guard);
        finish_authentication(client, &self.gatekeeper.parameters).await
    }
}

/// Reads the client-first-message and makes the server-first-message (RFC 5802 §5.1).
fn challenge(keys: ScramKeys, answer: PasswordMessageFamily) -> PgWireResult<(Step, String)> {
    let initial = answer.into_sasl_initial_response()?;
    if initial.auth_method != SCRAM {
        return Err(protocol_error("the only mechanism is SCRAM-SHA-256"));
    }
    let data = initial
        .data
        .ok_or_else(|| protocol_error("no client-first-message"))?;
    let client_first =
        std::str::from_utf8(&data).map_err(|_| protocol_error("the first message is not UTF-8"))?;
    // gs2-header: "n,," or "y,,"; channel binding ("p=") needs TLS exporter data we do not offer.
    let (binding, bare) = match client_first.get(..3) {
        Some("n,," | "y,,") => client_first.split_at(3),
        _ => return Err(protocol_error("channel binding is not offered")),
    };
    let client_nonce = bare
        .split(',')
        .find_map(|part| part.strip_prefix("r="))
        .ok_or_else(|| protocol_error("no nonce"))?;
    let mut random = [0u8; 18];
    ring_fill(&mut random)?;
    let nonce = format!("{client_nonce}{}", STANDARD.encode(random));
    let server_first = format!(
        "r={nonce},s={},i={}",
        STANDARD.encode(&keys.salt),
        keys.iterations
    );
    let step = Step::ScramChallenged {
        exchanged: format!("{bare},{server_first}"),
        binding: STANDARD.encode(binding),
        keys,
        nonce,
    };
    Ok((step, server_first))
}

fn ring_fill(bytes: &mut [u8]) -> PgWireResult<()> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| protocol_error("no random numbers for a nonce"))
}

/// Checks the client-final-message (RFC 5802 §5.1); the server's signature when it holds.
fn check_proof(
    keys: &ScramKeys,
    nonce: &str,
    exchanged: &str,
    binding: &str,
    client_final: &str,
) -> Option<Vec<u8>> {
    let (without_proof, proof) = client_final.rsplit_once(",p=")?;
    let mut parts = without_proof.split(',');
    if parts.next()? != format!("c={binding}") || parts.next()? != format!("r={nonce}") {
        return None;
    }
    let proof = STANDARD.decode(proof).ok()?;
    let auth_message = format!("{exchanged},{without_proof}");
    keys.accepts_proof(&auth_message, &proof)
        .then(|| keys.server_signature(&auth_message))
}
