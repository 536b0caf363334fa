//! Reaching a guest that may still be booting.
//!
//! Owns the connect loop: TCP connect, SSH handshake and public key authentication, retried
//! until a deadline, because a freshly booted guest refuses connections, resets them, or
//! rejects the key until its SSH server is up and the key is installed. It also owns the
//! russh client configuration. It must not run commands; that is [`crate::session`]'s job.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::MethodKind;
use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use russh::keys::PublicKeyOrCertificate;
use tracing::debug;

use crate::error::SshError;
use crate::key::KeyPair;
use crate::session::Session;

/// Where to connect and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
}

impl fmt::Display for Target {
    /// `user@host:port`, with IPv6 hosts in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.user, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// How long [`connect`] keeps trying.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Give up after this long, counted from the call.
    pub timeout: Duration,
    /// Wait this long between failed attempts.
    pub retry_interval: Duration,
}

impl Default for ConnectOptions {
    /// Five minutes, retrying every 250 ms: a guest under software emulation can take
    /// minutes to boot.
    fn default() -> Self {
        ConnectOptions {
            timeout: Duration::from_secs(5 * 60),
            retry_interval: Duration::from_millis(250),
        }
    }
}

/// Bounds one attempt, so that a connection that is accepted but never answered (QEMU's
/// user-mode port forwarding accepts before the guest listens) cannot use up the whole
/// timeout. Generous, because key exchange on an emulated CPU is slow.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to wait for the server's identification line before starting over. QEMU's
/// user-mode network accepts a forwarded connection at once but may hand it to the guest much
/// later; measured under CPU load, holding the first connection open found SSH ~8 s later than
/// reconnecting when no banner came within 1.5 s. A banner is a few bytes and needs no crypto,
/// so a short bound does not hurt slow guests; key exchange keeps the long [`ATTEMPT_TIMEOUT`].
const BANNER_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects and authenticates with `key`, retrying refused or reset connections, failed
/// handshakes and rejected authentication (the guest may not have installed the key yet)
/// until `opts.timeout`; then fails with [`SshError::Timeout`] carrying the last error.
///
/// The guest's host key is accepted whatever it is: every guest is new and generates its host
/// key at first boot, so there is nothing to compare it with.
pub async fn connect(
    target: &Target,
    key: &KeyPair,
    opts: &ConnectOptions,
) -> Result<Session, SshError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let config = Arc::new(client_config());
    let mut attempt = 0u32;
    let mut previous: Option<String> = None;
    loop {
        attempt += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(ATTEMPT_TIMEOUT);
        let last_error = match tokio::time::timeout(
            budget,
            try_connect(target, key, Arc::clone(&config)),
        )
        .await
        {
            Ok(Ok(handle)) => {
                debug!(%target, attempt, elapsed = ?started.elapsed(), "ssh session established");
                return Ok(Session::new(handle, target.clone()));
            }
            Ok(Err(Attempt::Fatal(e))) => return Err(e),
            Ok(Err(Attempt::Retry(message))) => message,
            // An attempt cut short by the overall deadline says less than the one before it.
            Err(_) if budget < ATTEMPT_TIMEOUT && previous.is_some() => {
                previous.take().unwrap_or_default()
            }
            Err(_) => format!(
                "no ssh handshake and authentication within {:.1}s",
                budget.as_secs_f64()
            ),
        };
        previous = Some(last_error.clone());
        debug!(%target, attempt, error = %last_error, "ssh connection attempt failed");
        let remaining = deadline.saturating_duration_since(Instant::now());
        if !remaining.is_zero() {
            tokio::time::sleep(opts.retry_interval.min(remaining)).await;
        }
        // Give up when the pause used up the time: an attempt squeezed into the last instant
        // would only replace a useful last error with a useless "timed out".
        if Instant::now() >= deadline {
            return Err(SshError::Timeout {
                target: target.to_string(),
                waited: started.elapsed(),
                last_error,
            });
        }
    }
}

enum Attempt {
    /// Worth trying again: the guest may be further along next time.
    Retry(String),
    /// Trying again cannot help.
    Fatal(SshError),
}

async fn try_connect(
    target: &Target,
    key: &KeyPair,
    config: Arc<client::Config>,
) -> Result<client::Handle<AcceptAnyHostKey>, Attempt> {
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| Attempt::Retry(format!("tcp connect: {e}")))?;
    // Interactive-sized packets (exec requests, small outputs) should not wait for Nagle.
    let _ = stream.set_nodelay(true);
    // The server speaks first. `peek` leaves the banner for russh to read.
    let mut first = [0u8; 1];
    match tokio::time::timeout(BANNER_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(n)) if n > 0 => {}
        Ok(Ok(_)) => {
            return Err(Attempt::Retry(
                "connection closed before the ssh banner".into(),
            ));
        }
        Ok(Err(e)) => return Err(Attempt::Retry(format!("waiting for the ssh banner: {e}"))),
        Err(_) => {
            return Err(Attempt::Retry(format!(
                "no ssh banner within {}s",
                BANNER_TIMEOUT.as_secs()
            )));
        }
    }
    let mut handle = client::connect_stream(config, stream, AcceptAnyHostKey)
        .await
        .map_err(|e| Attempt::Retry(format!("ssh handshake: {e}")))?;
    let auth = handle
        .authenticate_publickey(
            target.user.clone(),
            PrivateKeyWithHashAlg::new(key.private_key(), None),
        )
        .await
        .map_err(|e| Attempt::Retry(format!("ssh authentication: {e}")))?;
    match auth {
        client::AuthResult::Success => Ok(handle),
        client::AuthResult::Failure {
            remaining_methods, ..
        } if !remaining_methods.is_empty()
            && !remaining_methods.contains(&MethodKind::PublicKey) =>
        {
            Err(Attempt::Fatal(SshError::Auth {
                target: target.to_string(),
                user: target.user.clone(),
                message: "the server does not accept public key authentication".to_owned(),
            }))
        }
        client::AuthResult::Failure { .. } => Err(Attempt::Retry(format!(
            "the server rejected the key {} for user {}",
            key.fingerprint(),
            target.user
        ))),
    }
}

fn client_config() -> client::Config {
    client::Config {
        // A long silent command (a package upgrade) is normal; a dead guest is detected by
        // unanswered keepalives instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 8,
        nodelay: true,
        ..client::Config::default()
    }
}

/// See [`connect`] for why any host key is accepted.
#[derive(Debug)]
pub(crate) struct AcceptAnyHostKey;

impl client::Handler for AcceptAnyHostKey {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_displays_as_user_at_host_port() {
        let t = Target {
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
        };
        assert_eq!(t.to_string(), "root@127.0.0.1:2222");
        let t6 = Target {
            host: "::1".into(),
            ..t
        };
        assert_eq!(t6.to_string(), "root@[::1]:2222");
    }

    #[test]
    fn default_options() {
        let o = ConnectOptions::default();
        assert_eq!(o.timeout, Duration::from_secs(300));
        assert_eq!(o.retry_interval, Duration::from_millis(250));
    }
}
