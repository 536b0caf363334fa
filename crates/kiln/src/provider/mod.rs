//! Providers: the places that run build machines and keep images.
//!
//! A [`Provider`] launches a [`Machine`] from an image's source and removes any resource it
//! journaled, including those of runs that died (`gc`). A [`Machine`] is reached over SSH,
//! stopped by the guest itself after the shutdown command, and captured into an image. The
//! shape is deliberately not QEMU's: a cloud provider launches an instance, waits for it to
//! stop and creates an image from it (or, like GCE, deletes the instance first and images its
//! disk); regions, sharing and copies will be further methods with default "not supported".
//!
//! Providers must journal every resource through [`Resources`] *before* creating it, and their
//! `destroy` must treat "already gone" as success. Errors are mapped to [`ProviderError`]
//! meanings so that cleanup can reason about them without knowing the backend.

pub mod local;
pub mod qemu;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::events::{Event, EventSink};
use crate::journal::{Journal, JournalError, Resource};

/// What went wrong in a provider, by meaning (STYLE.md §8).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{what} not found{}", .hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NotFound { what: String, hint: Option<String> },
    #[error("{what}: permission denied")]
    PermissionDenied {
        what: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{what} is not supported by the {provider} provider")]
    NotSupported { provider: String, what: String },
    #[error("{what} did not finish within {}", humantime::format_duration(*.waited))]
    Timeout { what: String, waited: Duration },
    /// The journal could not record a resource, so it was not created.
    #[error("record a resource in the journal")]
    Journal(#[from] JournalError),
    #[error("{message}")]
    Other {
        provider: String,
        message: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl ProviderError {
    pub fn other(provider: &str, message: impl Into<String>) -> ProviderError {
        ProviderError::Other {
            provider: provider.to_string(),
            message: message.into(),
            source: None,
        }
    }

    pub fn io(provider: &str, message: impl Into<String>, source: std::io::Error) -> ProviderError {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            return ProviderError::PermissionDenied {
                what: message.into(),
                source: Some(Box::new(source)),
            };
        }
        ProviderError::Other {
            provider: provider.to_string(),
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A journal record's `data` from a JSON object literal (anything else gives an empty map).
pub fn data(pairs: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match pairs {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// The journal plus the event sink, handed to providers so that every resource they create is
/// recorded first and reported.
#[derive(Debug, Clone)]
pub struct Resources {
    journal: Arc<Journal>,
    events: Arc<dyn EventSink>,
    image: Option<String>,
}

/// A journaled resource; pass it back to [`Resources::removed`] once it is gone.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub rid: u64,
    pub resource: Resource,
}

impl Resources {
    pub fn new(journal: Arc<Journal>, events: Arc<dyn EventSink>, image: Option<String>) -> Self {
        Resources {
            journal,
            events,
            image,
        }
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn events(&self) -> &Arc<dyn EventSink> {
        &self.events
    }

    pub fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }

    /// Journal (and fsync) a resource about to be created.
    pub fn creating(
        &self,
        provider: &str,
        kind: &str,
        id: impl Into<String>,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Tracked, JournalError> {
        let resource = Resource {
            provider: provider.to_string(),
            kind: kind.to_string(),
            id: id.into(),
            image: self.image.clone(),
            data,
        };
        let rid = self.journal.create(resource.clone())?;
        self.events.emit(Event::ResourceCreated {
            image: self.image.clone(),
            provider: resource.provider.clone(),
            kind: resource.kind.clone(),
            id: resource.id.clone(),
        });
        Ok(Tracked { rid, resource })
    }

    pub fn update(
        &self,
        tracked: &mut Tracked,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), JournalError> {
        tracked.resource.data.extend(data.clone());
        self.journal.update(tracked.rid, data)
    }

    pub fn removed(&self, tracked: &Tracked) -> Result<(), JournalError> {
        self.journal.remove(tracked.rid)?;
        self.events.emit(Event::ResourceRemoved {
            image: self.image.clone(),
            provider: tracked.resource.provider.clone(),
            kind: tracked.resource.kind.clone(),
            id: tracked.resource.id.clone(),
        });
        Ok(())
    }
}

/// What the runner asks a provider to launch.
#[derive(Debug)]
pub struct LaunchRequest<'a> {
    pub image: &'a kiln_config::Image,
    /// Stable, unique name for the machine: tags, VM names, markers for `gc`.
    pub machine_name: String,
    /// Scratch directory of this image in this run (already created and journaled).
    pub scratch: PathBuf,
    /// The public half of the per-build key, in OpenSSH format, for cloud-init.
    pub ssh_public_key: String,
    /// The guest's per-build host key, handed to it through cloud-init (`ssh_keys`) so that
    /// kiln can accept exactly that key. `None` with `ssh.host_key = "accept-new"`.
    pub host_key: Option<HostKey>,
}

/// A host key for the guest. The private half lives in memory only: providers may pass it to
/// the guest (user-data over a loopback HTTP seed, an instance's user-data) but never write it
/// to the host's disk, a log or the journal.
#[derive(Clone)]
pub struct HostKey {
    /// OpenSSH PEM (`-----BEGIN OPENSSH PRIVATE KEY-----`…).
    pub private_openssh: zeroize::Zeroizing<String>,
    /// `ssh-ed25519 AAAA… kiln-host`.
    pub public_openssh: String,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("public_openssh", &self.public_openssh)
            .finish_non_exhaustive()
    }
}

/// Where SSH reaches a machine.
#[derive(Debug, Clone)]
pub struct SshEndpoint {
    pub host: String,
    pub port: u16,
}

/// What the manifest records about how a machine ran (provider specific, e.g. accelerator).
pub type MachineFacts = serde_json::Map<String, serde_json::Value>;

/// Where and how to write a captured image.
#[derive(Debug)]
pub struct CaptureRequest<'a> {
    pub output: &'a kiln_config::Output,
    /// The file to write; the runner renames it into place afterwards.
    pub path: &'a Path,
}

/// What a capture produced.
#[derive(Debug, Clone)]
pub enum Captured {
    LocalFile { path: PathBuf, format: String },
}

/// A running build machine.
#[async_trait]
pub trait Machine: Send + Sync + std::fmt::Debug {
    fn ssh_endpoint(&self) -> SshEndpoint;
    fn facts(&self) -> MachineFacts;
    /// Why the machine might not answer: the tail of its console, if the provider has one.
    fn console_tail(&self, lines: usize) -> Vec<String>;
    /// When SSH never answered: the likely cause, if what the machine printed shows one
    /// (cloud-init refusing the seed, an SSH server without host keys, …).
    fn diagnose_unreachable(&self) -> Option<String> {
        None
    }
    /// `Some(reason)` if the machine is already gone (crashed, exited).
    fn exited(&mut self) -> Option<String>;
    /// Wait for the machine to stop after the guest was told to shut down.
    async fn wait_stopped(&mut self, timeout: Duration) -> Result<(), ProviderError>;
    /// Turn the stopped machine into an image.
    async fn capture(&mut self, req: &CaptureRequest<'_>) -> Result<Captured, ProviderError>;
    /// Remove the machine and everything it created, whatever state it is in. Idempotent.
    async fn destroy(&mut self) -> Result<(), ProviderError>;
    /// Leave the machine running (`--on-error=abort`); returns how to reach and remove it.
    fn keep(&mut self) -> String;
}

/// A place that runs build machines.
#[async_trait]
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn name(&self) -> &'static str;
    async fn launch(
        &self,
        req: &LaunchRequest<'_>,
        res: &Resources,
    ) -> Result<Box<dyn Machine>, ProviderError>;
    /// Remove a resource this provider journaled, possibly in an earlier, dead run.
    /// Already gone is success.
    async fn destroy(&self, resource: &Resource) -> Result<(), ProviderError>;
    /// Whether a journaled resource still exists (for `kiln status`).
    async fn exists(&self, resource: &Resource) -> Result<bool, ProviderError>;
}

/// The providers this build of kiln knows, by name.
#[derive(Debug, Clone)]
pub struct Registry {
    providers: Vec<Arc<dyn Provider>>,
}

impl Registry {
    pub fn builtin() -> Registry {
        Registry {
            providers: vec![
                Arc::new(local::LocalProvider),
                Arc::new(qemu::QemuProvider::from_env()),
            ],
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn Provider>> {
        self.providers.iter().find(|p| p.name() == name).cloned()
    }
}
