//! The crate's one public error type.
//!
//! Owns [`SshError`] and the small vocabulary its fields use. Every message is a lowercase
//! fragment that reads after "failed to …". Variants that wrap a cause keep it as
//! `#[source]` and do not repeat it in their own text, so an error reporter prints each
//! cause once. Nothing here may carry private key material: key errors name the file,
//! never its contents.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A cause from a lower layer (russh, ssh-key), kept opaque so that the public API does not
/// change when those crates do.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Which way a transfer was going when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferDirection {
    /// Local to guest.
    Upload,
    /// Guest to local.
    Download,
}

impl fmt::Display for TransferDirection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransferDirection::Upload => "upload to",
            TransferDirection::Download => "download",
        })
    }
}

/// Everything that can go wrong while talking to a guest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// The operating system's random source failed.
    #[error("generate an ed25519 key pair")]
    KeyGenerate {
        #[source]
        source: BoxError,
    },

    /// The key could not be encoded in OpenSSH format.
    #[error("encode the private key in openssh format")]
    KeyEncode {
        #[source]
        source: BoxError,
    },

    /// `write_private_openssh` never overwrites: an existing file may be someone's key.
    #[error("write the private key to {path}: the file already exists")]
    KeyExists { path: PathBuf },

    /// The file is not an unencrypted OpenSSH ed25519 private key.
    #[error("load the private key from {path}: {reason}")]
    KeyInvalid { path: PathBuf, reason: String },

    /// A local file system operation failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done, as a verb phrase ("create directory", "read").
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `connect` kept failing until its deadline.
    #[error("connect to {target} within {:.1}s; last error: {last_error}", .waited.as_secs_f64())]
    Timeout {
        target: String,
        waited: Duration,
        last_error: String,
    },

    /// The server presented a host key other than the pinned one: the guest did not install
    /// the host key it was given, or a different machine answered. Not retried.
    #[error(
        "verify the host key of {target}: it presented {presented} ({presented_algorithm}), \
         not the pinned {expected} ({expected_algorithm}); either the guest ignored the host \
         key kiln gave it or another machine answered (for an image that ignores it, set \
         ssh.host_key = \"accept-new\")"
    )]
    HostKeyMismatch {
        target: String,
        /// SHA-256 fingerprint of the pinned key (`SHA256:…`).
        expected: String,
        expected_algorithm: String,
        /// SHA-256 fingerprint of the key the server presented.
        presented: String,
        presented_algorithm: String,
    },

    /// The server has no host key of the pinned key's type, so it cannot present the pinned
    /// key. Not retried.
    #[error(
        "verify the host key of {target}: it offers no {expected_algorithm} host key (only \
         {}), so it cannot present the pinned {expected}; either the guest ignored the host \
         key kiln gave it or another machine answered (for an image that ignores it, set \
         ssh.host_key = \"accept-new\")",
        .offered.join(", ")
    )]
    HostKeyAlgorithmUnavailable {
        target: String,
        /// SHA-256 fingerprint of the pinned key.
        expected: String,
        expected_algorithm: String,
        /// The host key algorithms the server offered.
        offered: Vec<String>,
    },

    /// The handshake completed without the server presenting a host key to check (russh's
    /// non-standard "none" key exchange, which kiln never asks for). Not retried.
    #[error("verify the host key of {target}: the server presented none")]
    HostKeyMissing { target: String },

    /// The text is not an OpenSSH public key line.
    #[error("parse an openssh public key line: {reason}")]
    PublicKeyInvalid { reason: String },

    /// The server does not offer public key authentication at all, so retrying cannot help.
    #[error("authenticate as {user} on {target}: {message}")]
    Auth {
        target: String,
        user: String,
        message: String,
    },

    /// The SSH connection or one of its channels failed after connecting.
    #[error("{action} on {target}")]
    Channel {
        target: String,
        /// What was being done, as a verb phrase ("open a session channel").
        action: &'static str,
        #[source]
        source: BoxError,
    },

    /// The server refused the exec request.
    #[error("start a command on {target}: the server refused the exec request")]
    ExecRefused { target: String },

    /// The channel closed without an exit status or exit signal.
    #[error("run a command on {target}: the channel closed without an exit status")]
    NoExitStatus { target: String },

    /// The command died from a signal whose number is not known.
    #[error("run a command on {target}: it was killed by signal {signal}")]
    KilledBySignal { target: String, signal: String },

    /// A transfer's guest-side command failed, or its local side could not be used.
    #[error("{direction} {path} on {target}: {message}")]
    Transfer {
        direction: TransferDirection,
        target: String,
        /// The guest path (or, for local problems, the local path).
        path: String,
        /// What went wrong, including the guest's stderr when there was any.
        message: String,
    },

    /// The path to download does not exist on the guest.
    #[error("download {path} from {target}: no such file or directory")]
    RemoteNotFound { target: String, path: String },

    /// A remote path that cannot name what the operation needs.
    #[error("use remote path {path:?}: {reason}")]
    InvalidRemotePath { path: String, reason: &'static str },

    /// A local path that cannot be uploaded (no file name, not UTF-8, a special file).
    #[error("upload {path}: {reason}")]
    InvalidLocalPath { path: PathBuf, reason: &'static str },

    /// A downloaded archive tried to write outside its destination or contained something we
    /// refuse to create. Nothing of that entry was written.
    #[error("unpack archive entry {entry:?}: {reason}")]
    UnsafeEntry { entry: String, reason: String },
}

impl SshError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SshError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
