//! kiln's communicator: reaching a freshly booted guest over SSH with a per-build ed25519
//! key, running commands on it with streamed output, and moving files both ways.
//!
//! Guests range from a busybox + dropbear Linux with no scp and no sftp server to cloud
//! images with OpenSSH, so every transfer is a tar or cat stream over an exec channel.
//! This crate owns the SSH protocol side of kiln and nothing else: it does not know about
//! builds, steps or providers, and it never logs or reports private key material.
//!
//! Host keys are verified, not trusted on sight: kiln generates a host key per build
//! ([`KeyPair::generate_host_key`]), hands its private half to the guest through cloud-init
//! ([`KeyPair::private_openssh`]) and connects with [`HostKeyPolicy::Pinned`], which accepts
//! only that key and fails at once, without retrying, on any other
//! ([`SshError::HostKeyMismatch`]). [`HostKeyPolicy::AcceptNew`] accepts whatever key the
//! server presents, for images that ignore the key they are given; either way the accepted
//! key is [`Session::host_key`].
//!
//! - [`KeyPair`]: the per-build client key and host key.
//! - [`HostKeyPolicy`], [`PublicKey`]: which host key to accept.
//! - [`connect()`]: connecting with retries while the guest boots.
//! - [`Session`]: exec, upload, download on one connection.
//! - [`shell_quote`]: quoting words for the guest's shell.

mod connect;
mod error;
mod host_key;
mod key;
mod pack;
mod remote_path;
mod session;
mod transfer;
mod unpack;

pub use connect::{ConnectOptions, Target, connect};
pub use error::{BoxError, SshError, TransferDirection};
pub use host_key::{HostKeyPolicy, PublicKey};
pub use key::KeyPair;
pub use remote_path::shell_quote;
pub use session::{OutputStream, Session};
