//! Reaching a guest that may still be booting.
//!
//! Owns the connect loop: TCP connect, SSH handshake and public key authentication, retried
//! until a deadline, because a freshly booted guest refuses connections, resets them, or
//! rejects the key until its SSH server is up and the key is installed. It also owns the
//! russh client configuration. It must not run commands; that is [`crate::session`]'s job.
//!
//! Host keys are verified during the handshake by the policy in [`ConnectOptions::host_key`]
//! (see [`crate::host_key`]): with [`HostKeyPolicy::Pinned`] the client asks only for host
//! keys of the pinned key's type and accepts only that key. A wrong key, or a server without
//! a key of that type, ends the connect at once instead of being retried until the deadline:
//! a guest that booted with another host key keeps it, so waiting cannot help, and the client
//! key is never offered to a server that failed the check.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::client;
use russh::keys::PrivateKeyWithHashAlg;
use russh::{AlgorithmKind, MethodKind};
use tracing::debug;

use crate::error::SshError;
use crate::host_key::{HostKeyCheck, HostKeyPolicy, PresentedKey, PublicKey};
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

/// Which host key [`connect`] accepts, and how long it keeps trying.
///
/// There is no `Default`: the host key policy is a security decision each caller makes.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Which host key to accept.
    pub host_key: HostKeyPolicy,
    /// Give up after this long, counted from the call.
    pub timeout: Duration,
    /// Wait this long between failed attempts.
    pub retry_interval: Duration,
}

impl ConnectOptions {
    /// `host_key`, with a five-minute timeout, retrying every 250 ms: a guest under software
    /// emulation can take minutes to boot.
    pub fn new(host_key: HostKeyPolicy) -> Self {
        ConnectOptions {
            host_key,
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
/// The server's host key is checked against `opts.host_key`. A key the policy rejects is
/// [`SshError::HostKeyMismatch`] (or [`SshError::HostKeyAlgorithmUnavailable`] when the
/// server has no key of the pinned type), returned at once without retrying. The accepted key
/// is [`Session::host_key`].
pub async fn connect(
    target: &Target,
    key: &KeyPair,
    opts: &ConnectOptions,
) -> Result<Session, SshError> {
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let config = Arc::new(client_config(&opts.host_key));
    let mut attempt = 0u32;
    let mut previous: Option<String> = None;
    loop {
        attempt += 1;
        let budget = deadline
            .saturating_duration_since(Instant::now())
            .min(ATTEMPT_TIMEOUT);
        let last_error = match tokio::time::timeout(
            budget,
            try_connect(target, key, &opts.host_key, Arc::clone(&config)),
        )
        .await
        {
            Ok(Ok((handle, host_key))) => {
                debug!(
                    %target,
                    attempt,
                    elapsed = ?started.elapsed(),
                    host_key = %host_key.fingerprint(),
                    "ssh session established"
                );
                return Ok(Session::new(handle, target.clone(), host_key));
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
    policy: &HostKeyPolicy,
    config: Arc<client::Config>,
) -> Result<(client::Handle<HostKeyCheck>, PublicKey), Attempt> {
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
    let presented = PresentedKey::default();
    let handler = HostKeyCheck::new(policy, presented.clone());
    let handshake = client::connect_stream(config, stream, handler).await;
    let presented = presented.take();
    let mut handle = handshake.map_err(|e| handshake_failure(target, policy, &presented, e))?;
    // Checked before authenticating, so that nothing is sent to a server that is not the guest.
    let Some(host_key) = presented else {
        return Err(Attempt::Fatal(SshError::HostKeyMissing {
            target: target.to_string(),
        }));
    };
    let auth = handle
        .authenticate_publickey(
            target.user.clone(),
            PrivateKeyWithHashAlg::new(key.private_key(), None),
        )
        .await
        .map_err(|e| Attempt::Retry(format!("ssh authentication: {e}")))?;
    match auth {
        client::AuthResult::Success => Ok((handle, host_key)),
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

/// Classifies a failed handshake: a host key the policy rejected, or a server that has no key
/// of the pinned type, is fatal; anything else may be a guest still starting up.
fn handshake_failure(
    target: &Target,
    policy: &HostKeyPolicy,
    presented: &Option<PublicKey>,
    error: russh::Error,
) -> Attempt {
    let Some(pinned) = policy.pinned_key() else {
        return Attempt::Retry(format!("ssh handshake: {error}"));
    };
    match (presented, error) {
        // The handler refused this key; russh reports that only as "unknown server key".
        (Some(presented), _) if presented != pinned => Attempt::Fatal(SshError::HostKeyMismatch {
            target: target.to_string(),
            expected: pinned.fingerprint(),
            expected_algorithm: pinned.algorithm(),
            presented: presented.fingerprint(),
            presented_algorithm: presented.algorithm(),
        }),
        (
            None,
            russh::Error::NoCommonAlgo {
                kind: AlgorithmKind::Key,
                theirs,
                ..
            },
        ) => Attempt::Fatal(SshError::HostKeyAlgorithmUnavailable {
            target: target.to_string(),
            expected: pinned.fingerprint(),
            expected_algorithm: pinned.algorithm(),
            offered: theirs,
        }),
        (_, error) => Attempt::Retry(format!("ssh handshake: {error}")),
    }
}

fn client_config(host_key: &HostKeyPolicy) -> client::Config {
    client::Config {
        // A long silent command (a package upgrade) is normal; a dead guest is detected by
        // unanswered keepalives instead.
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 8,
        nodelay: true,
        preferred: russh::Preferred {
            // A server with several host keys presents the first type we list that it has;
            // listing only the pinned type makes it present the key it was given, not one it
            // generated itself.
            key: host_key.host_key_algorithms(),
            ..russh::Preferred::default()
        },
        ..client::Config::default()
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
    fn new_options_wait_five_minutes() {
        let o = ConnectOptions::new(HostKeyPolicy::AcceptNew);
        assert_eq!(o.host_key, HostKeyPolicy::AcceptNew);
        assert_eq!(o.timeout, Duration::from_secs(300));
        assert_eq!(o.retry_interval, Duration::from_millis(250));
    }

    #[test]
    fn pinning_restricts_the_host_key_algorithms_and_accept_new_keeps_them() {
        let pinned = HostKeyPolicy::pinned(&KeyPair::generate_host_key().unwrap());
        let names = |policy: &HostKeyPolicy| -> Vec<String> {
            client_config(policy)
                .preferred
                .key
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(names(&pinned), ["ssh-ed25519"]);
        let defaults: Vec<String> = russh::Preferred::default()
            .key
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names(&HostKeyPolicy::AcceptNew), defaults);
        // Everything else keeps russh's defaults.
        let config = client_config(&pinned);
        assert_eq!(config.preferred.kex, russh::Preferred::default().kex);
        assert_eq!(config.preferred.cipher, russh::Preferred::default().cipher);
    }
}
