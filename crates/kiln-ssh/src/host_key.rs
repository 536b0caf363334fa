//! Deciding whether the SSH server that answered is the guest.
//!
//! Owns [`PublicKey`], [`HostKeyPolicy`] and the russh client handler that applies the policy
//! during the handshake, plus the host key algorithms the client asks for. kiln gives each
//! guest a fresh host key through cloud-init, so a pinned key proves that the server is the
//! guest kiln launched and not whatever else answered at its address. This module decides and
//! records; turning a rejection into an error and not retrying it is [`crate::connect`]'s job.

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use russh::client;
use russh::keys::ssh_key::{Algorithm, HashAlg};
use russh::keys::{self, PublicKeyOrCertificate};

use crate::error::SshError;
use crate::key::KeyPair;

/// A public SSH key, such as the host key a guest presents or the one it is expected to.
///
/// Two keys are equal when their key material is; the comment is ignored, because a server
/// presents its key without one.
#[derive(Clone)]
pub struct PublicKey {
    key: keys::PublicKey,
}

impl PublicKey {
    /// Parses one OpenSSH public key line (`ssh-ed25519 AAAA… comment`), as in a `.pub` file
    /// or `dropbearkey -y` output.
    pub fn from_openssh(line: &str) -> Result<PublicKey, SshError> {
        // The text is not echoed: a caller that passed the wrong file may have passed a
        // private key.
        keys::PublicKey::from_openssh(line.trim())
            .map(PublicKey::from)
            .map_err(|e| SshError::PublicKeyInvalid {
                reason: e.to_string(),
            })
    }

    /// The key as one OpenSSH line: `ssh-ed25519 AAAA… comment`, without a comment if it has
    /// none.
    pub fn to_openssh(&self) -> String {
        self.key
            .to_openssh()
            .expect("encoding a public key into a String cannot fail")
    }

    /// The SHA-256 fingerprint, as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The key's algorithm as SSH names it (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`).
    pub fn algorithm(&self) -> String {
        self.key.algorithm().as_str().to_owned()
    }

    /// The host key algorithms to ask a server for so that it presents this key's type: all
    /// the RSA signature variants for an RSA key, else exactly the key's algorithm.
    fn host_key_algorithms(&self) -> Vec<Algorithm> {
        let own = self.key.algorithm();
        let own_is_rsa = matches!(own, Algorithm::Rsa { .. });
        let supported: Vec<Algorithm> = russh::Preferred::DEFAULT
            .key
            .iter()
            .filter(|a| {
                if own_is_rsa {
                    matches!(a, Algorithm::Rsa { .. })
                } else {
                    **a == own
                }
            })
            .cloned()
            .collect();
        // russh cannot verify a type it does not list; asking for it anyway makes the
        // handshake fail instead of quietly settling on a key of another type.
        if supported.is_empty() {
            vec![own]
        } else {
            supported
        }
    }
}

impl From<keys::PublicKey> for PublicKey {
    fn from(key: keys::PublicKey) -> Self {
        PublicKey { key }
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.key_data() == other.key.key_data()
    }
}

impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.key.algorithm().as_str())
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

/// Which host key [`crate::connect`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Only this key. The client asks only for host keys of its type, so that a server with
    /// several host keys presents the one it was given; any other key is
    /// [`SshError::HostKeyMismatch`], and no such type is
    /// [`SshError::HostKeyAlgorithmUnavailable`]. Both end the connect at once.
    Pinned(PublicKey),
    /// Whatever key the server presents: every guest is new, so there is nothing to compare
    /// it with. The key is recorded in [`crate::Session::host_key`]. For images that ignore
    /// the host key kiln gives them.
    AcceptNew,
}

impl HostKeyPolicy {
    /// Accept only the public half of `key`, the host key handed to the guest.
    pub fn pinned(key: &KeyPair) -> HostKeyPolicy {
        HostKeyPolicy::Pinned(key.public_key())
    }

    /// Accept only the key in an OpenSSH public key line (see [`PublicKey::from_openssh`]).
    pub fn pinned_openssh(line: &str) -> Result<HostKeyPolicy, SshError> {
        PublicKey::from_openssh(line).map(HostKeyPolicy::Pinned)
    }

    pub(crate) fn pinned_key(&self) -> Option<&PublicKey> {
        match self {
            HostKeyPolicy::Pinned(key) => Some(key),
            HostKeyPolicy::AcceptNew => None,
        }
    }

    /// The client's preferred host key algorithms under this policy.
    pub(crate) fn host_key_algorithms(&self) -> Cow<'static, [Algorithm]> {
        match self {
            HostKeyPolicy::Pinned(key) => Cow::Owned(key.host_key_algorithms()),
            HostKeyPolicy::AcceptNew => russh::Preferred::DEFAULT.key,
        }
    }
}

/// The host key a server presented during one handshake. Shared because russh moves the
/// handler into its session task, and the caller needs the key whether the handshake
/// succeeded (for [`crate::Session::host_key`]) or was refused (for the error).
#[derive(Debug, Clone, Default)]
pub(crate) struct PresentedKey(Arc<Mutex<Option<PublicKey>>>);

impl PresentedKey {
    pub(crate) fn take(&self) -> Option<PublicKey> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    fn set(&self, key: PublicKey) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
    }
}

/// The russh client handler: applies the policy to the server's host key and records it.
#[derive(Debug)]
pub(crate) struct HostKeyCheck {
    pinned: Option<PublicKey>,
    presented: PresentedKey,
}

impl HostKeyCheck {
    pub(crate) fn new(policy: &HostKeyPolicy, presented: PresentedKey) -> Self {
        HostKeyCheck {
            pinned: policy.pinned_key().cloned(),
            presented,
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_public_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // No certificate algorithms are advertised, so a certificate is unexpected; if one
        // comes anyway, the server has proven that it holds the certified key, which is the
        // key to judge.
        let presented = PublicKey::from(match server_public_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                keys::PublicKey::new(cert.public_key().clone(), "")
            }
        });
        let accepted = self
            .pinned
            .as_ref()
            .is_none_or(|pinned| *pinned == presented);
        self.presented.set(presented);
        Ok(accepted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519_LINE: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPkWuZmeHC9U3Tcszcoi8A9Tcx5ZQX0Bt9BOtcJv6Wc8 root@vm";

    #[test]
    fn parses_an_openssh_line_and_fingerprints_it_like_dropbearkey() {
        let key = PublicKey::from_openssh(&format!("{ED25519_LINE}\n")).unwrap();
        assert_eq!(key.algorithm(), "ssh-ed25519");
        // As printed by `dropbearkey -y` for this key.
        assert_eq!(
            key.fingerprint(),
            "SHA256:agp7w8tyldP6OZyOYnMbdymxarO0B5FHNi+nnvTASmI"
        );
        assert_eq!(key.to_openssh(), ED25519_LINE);
        assert_eq!(
            format!("{key:?}"),
            "PublicKey { algorithm: \"ssh-ed25519\", \
             fingerprint: \"SHA256:agp7w8tyldP6OZyOYnMbdymxarO0B5FHNi+nnvTASmI\" }"
        );
    }

    #[test]
    fn equality_ignores_the_comment() {
        let with = PublicKey::from_openssh(ED25519_LINE).unwrap();
        let without = PublicKey::from_openssh(ED25519_LINE.trim_end_matches(" root@vm")).unwrap();
        assert_eq!(with, without);
        let other = KeyPair::generate().unwrap().public_key();
        assert_ne!(with, other);
    }

    #[test]
    fn a_bad_line_is_rejected_without_echoing_it() {
        let err = PublicKey::from_openssh("ssh-ed25519 SECRETSECRET").unwrap_err();
        assert!(matches!(err, SshError::PublicKeyInvalid { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(
            text.starts_with("parse an openssh public key line: "),
            "{text}"
        );
        assert!(!text.contains("SECRETSECRET"), "{text}");
    }

    #[test]
    fn pinning_asks_only_for_the_pinned_type() {
        let policy = HostKeyPolicy::pinned(&KeyPair::generate_host_key().unwrap());
        assert_eq!(&*policy.host_key_algorithms(), &[Algorithm::Ed25519]);

        let rsa = HostKeyPolicy::pinned_openssh(RSA_LINE).unwrap();
        let names: Vec<String> = rsa
            .host_key_algorithms()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]);

        assert_eq!(
            HostKeyPolicy::AcceptNew.host_key_algorithms(),
            russh::Preferred::DEFAULT.key
        );
    }

    const RSA_LINE: &str = concat!(
        "ssh-rsa ",
        "AAAAB3NzaC1yc2EAAAADAQABAAABAQCxfPwPwGDktTm2L2q0vbBAVl4B4wdBN3ygSH0Otf0ucLwE4ZC3",
        "Y+Xm33tpeG3mqNYDK0fmwBQSbyeQ16pWoiWdc5/6ALlZvRbDzvPUroOTKJh42aGDZ6hJsNv74o0jmHXk",
        "c4V/X3zP8mvHvodwvf/JDTJ+1N8/W0RckfwyNFemf1rg7gR/gglb//SLwMM1jjrF1hrvc3HGceOECi8L",
        "oC8bBgKqRJMmgiofCfIqbSicGm4jwcuPGAoTscb02TflXKttHXpimtbffuiPIE1Ua40wYASiPQXQW161",
        "U9LPNK4FFiAQjsa+cEUaF37dwJKkMuG5j8Dnr0fH9J+zlzDpyUhd",
        " test"
    );
}
