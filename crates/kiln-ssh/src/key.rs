//! The per-build ed25519 key pairs: the client key kiln logs in with, and the host key it
//! gives the guest.
//!
//! Owns generating a key, rendering its public half for `authorized_keys` or for pinning, and
//! rendering the private half as OpenSSH PEM, to a file or (for a host key going into
//! cloud-init user-data) to memory. It must never let the private key reach a log, an error
//! message or a `Debug` rendering: the only text about the key that leaves this module on its
//! own is the public key and its fingerprint; the PEM leaves only when a caller asks for it.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey};
use zeroize::Zeroizing;

use crate::error::SshError;
use crate::host_key::PublicKey;

/// The comment the client key carries, so that a guest's `authorized_keys` says who put it there.
const KEY_COMMENT: &str = "kiln";

/// The comment the host key carries, so that a guest's `/etc/ssh/ssh_host_ed25519_key.pub`
/// says who made it.
const HOST_KEY_COMMENT: &str = "kiln-host";

/// An ed25519 key pair. Cloning is cheap and shares the key.
#[derive(Clone)]
pub struct KeyPair {
    key: Arc<PrivateKey>,
}

impl KeyPair {
    /// Generates a fresh client key pair from the operating system's random source. Its
    /// public half reads `ssh-ed25519 AAAA… kiln`.
    pub fn generate() -> Result<KeyPair, SshError> {
        KeyPair::generate_with_comment(KEY_COMMENT)
    }

    /// Generates a fresh host key pair for a guest, to hand it through cloud-init
    /// (`ssh_keys: {ed25519_private: …, ed25519_public: …}`) and pin with
    /// [`crate::HostKeyPolicy::pinned`]. Its public half reads `ssh-ed25519 AAAA… kiln-host`.
    pub fn generate_host_key() -> Result<KeyPair, SshError> {
        KeyPair::generate_with_comment(HOST_KEY_COMMENT)
    }

    fn generate_with_comment(comment: &str) -> Result<KeyPair, SshError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| SshError::KeyGenerate {
            source: Box::new(e),
        })?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment(comment);
        Ok(KeyPair { key: Arc::new(key) })
    }

    /// The public key as one `authorized_keys` line: `ssh-ed25519 AAAA… kiln` (or
    /// `… kiln-host` for a host key).
    pub fn public_openssh(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .expect("encoding an ed25519 public key into a String cannot fail")
    }

    /// The SHA-256 fingerprint, as `ssh-keygen -l` prints it (`SHA256:…`).
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// The public key, as [`crate::HostKeyPolicy::Pinned`] takes it.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from(self.key.public_key().clone())
    }

    /// The private key as OpenSSH PEM text (`-----BEGIN OPENSSH PRIVATE KEY-----`, LF line
    /// endings), unencrypted, for embedding a host key in cloud-init user-data. The text is
    /// wiped from memory when dropped; do not log it or put it in an error.
    pub fn private_openssh(&self) -> Result<Zeroizing<String>, SshError> {
        self.key
            .to_openssh(LineEnding::LF)
            .map_err(|e| SshError::KeyEncode {
                source: Box::new(e),
            })
    }

    /// Writes the private key as an OpenSSH PEM file with mode 0600.
    ///
    /// The file is created exclusively: an existing file is an error, never overwritten.
    pub fn write_private_openssh(&self, path: &Path) -> Result<(), SshError> {
        let pem = self.private_openssh()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => SshError::KeyExists {
                    path: path.to_path_buf(),
                },
                _ => SshError::io("create", path, e),
            })?;
        // The mode given to open() is filtered by the umask; a key must end up 0600 whatever
        // the umask is.
        let written = file
            .set_permissions(fs::Permissions::from_mode(0o600))
            .and_then(|()| file.write_all(pem.as_bytes()))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            drop(file);
            // A half-written key is useless and would make the next exclusive create fail.
            let _ = fs::remove_file(path);
            return Err(SshError::io("write", path, e));
        }
        Ok(())
    }

    /// Reads an unencrypted OpenSSH ed25519 private key, as written by
    /// [`KeyPair::write_private_openssh`] or `ssh-keygen -t ed25519 -N ''`.
    pub fn read_private_openssh(path: &Path) -> Result<KeyPair, SshError> {
        let pem = Zeroizing::new(fs::read(path).map_err(|e| SshError::io("read", path, e))?);
        let invalid = |reason: String| SshError::KeyInvalid {
            path: path.to_path_buf(),
            reason,
        };
        // ssh-key's error texts describe the structure that failed, never the key bytes.
        let key = PrivateKey::from_openssh(&*pem).map_err(|e| invalid(e.to_string()))?;
        if key.is_encrypted() {
            return Err(invalid("it is encrypted with a passphrase".to_owned()));
        }
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(invalid(format!(
                "it is an {} key, not ed25519",
                key.algorithm().as_str()
            )));
        }
        Ok(KeyPair { key: Arc::new(key) })
    }

    pub(crate) fn private_key(&self) -> Arc<PrivateKey> {
        Arc::clone(&self.key)
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("algorithm", &"ssh-ed25519")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_is_one_authorized_keys_line() {
        let key = KeyPair::generate().unwrap();
        let line = key.public_openssh();
        let parts: Vec<&str> = line.split(' ').collect();
        assert_eq!(parts.len(), 3, "{line}");
        assert_eq!(parts[0], "ssh-ed25519");
        assert!(parts[1].starts_with("AAAA"), "{line}");
        assert_eq!(parts[2], "kiln");
    }

    #[test]
    fn generated_keys_differ() {
        let a = KeyPair::generate().unwrap();
        let b = KeyPair::generate().unwrap();
        assert_ne!(a.public_openssh(), b.public_openssh());
    }

    #[test]
    fn write_then_read_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        let key = KeyPair::generate().unwrap();
        key.write_private_openssh(&path).unwrap();

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
            "{text}"
        );

        let back = KeyPair::read_private_openssh(&path).unwrap();
        assert_eq!(back.public_openssh(), key.public_openssh());
        assert_eq!(back.fingerprint(), key.fingerprint());
    }

    #[test]
    fn host_key_reads_kiln_host_and_its_pem_round_trips() {
        let key = KeyPair::generate_host_key().unwrap();
        let line = key.public_openssh();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" kiln-host"), "{line}");
        assert_eq!(key.public_key().to_openssh(), line);
        assert_eq!(key.public_key().fingerprint(), key.fingerprint());

        let pem = key.private_openssh().unwrap();
        assert!(
            pem.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
            "not openssh pem"
        );
        assert!(
            pem.ends_with("-----END OPENSSH PRIVATE KEY-----\n"),
            "not openssh pem"
        );
        assert!(!pem.contains('\r'));

        // The in-memory text is what the file would hold, and reads back as the same key.
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("written");
        key.write_private_openssh(&written).unwrap();
        assert!(fs::read_to_string(&written).unwrap() == *pem);
        let copied = dir.path().join("copied");
        fs::write(&copied, pem.as_bytes()).unwrap();
        let back = KeyPair::read_private_openssh(&copied).unwrap();
        assert_eq!(back.public_openssh(), line);
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn write_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        fs::write(&path, "precious").unwrap();
        let err = KeyPair::generate()
            .unwrap()
            .write_private_openssh(&path)
            .unwrap_err();
        assert!(matches!(err, SshError::KeyExists { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!(
                "write the private key to {}: the file already exists",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
    }

    #[test]
    fn read_rejects_garbage_without_echoing_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id_ed25519");
        fs::write(&path, "not-a-key-SECRETSECRET").unwrap();
        let err = KeyPair::read_private_openssh(&path).unwrap_err();
        assert!(matches!(err, SshError::KeyInvalid { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("SECRETSECRET"));
    }

    #[test]
    fn debug_shows_the_fingerprint_and_no_key_material() {
        let key = KeyPair::generate_host_key().unwrap();
        let pem = key.private_openssh().unwrap();

        let debug = format!(
            "{key:?} {key:#?} {:?} {:?}",
            key.public_key(),
            crate::HostKeyPolicy::pinned(&key)
        );
        assert!(debug.contains(&key.fingerprint()), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            // Every base64 line of the PEM body, and any long piece of it, must be absent.
            assert!(!debug.contains(line), "{debug}");
            assert!(!debug.contains(&line[..line.len().min(16)]), "{debug}");
        }
        let public_b64 = key.public_openssh().split(' ').nth(1).unwrap().to_owned();
        assert!(!debug.contains(&public_b64), "{debug}");
    }
}
