//! The checked model of a `kiln.toml`: what the planner and the runner see.
//!
//! Everything here has been validated: paths are absolute and (for inputs) exist, strings are
//! interpolated, names are unique, defaults are filled in. Nothing downstream re-validates.
//! This module owns no parsing; it must stay free of `toml`/`serde` attributes that exist only
//! to read the file (those live in `raw`). `Serialize` is derived so that the planner can hash
//! a step's definition and so that `kiln plan --json` can show the model.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A validated `kiln.toml`.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The file this came from (absolute).
    pub path: PathBuf,
    /// The directory relative paths in the file were resolved against (the file's parent).
    pub root: PathBuf,
    pub project: Project,
    /// Variables after `[vars]`, `--var-file` and `--var` were merged (later wins).
    pub vars: BTreeMap<String, String>,
    /// Images in file order. Names are unique.
    pub images: Vec<Image>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub name: String,
    /// Where finished images and manifests go (absolute). Default: `<root>/output`.
    pub output_dir: PathBuf,
}

/// One image to bake.
#[derive(Debug, Clone, Serialize)]
pub struct Image {
    /// Unique; matches `[a-z0-9][a-z0-9_-]*`.
    pub name: String,
    pub source: Source,
    pub ssh: Ssh,
    pub shutdown: Shutdown,
    /// Provisioning steps, in order.
    pub provision: Vec<Step>,
    /// Test steps, run after provisioning; any failure means no image is written.
    pub test: Vec<Step>,
    /// What is removed from the guest before it is stopped for capture.
    pub generalize: Generalize,
    pub output: Output,
}

/// Removing what the build left in the guest, so that users do not ship it (modelled on
/// libguestfs' `virt-sysprep` operations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generalize {
    /// The build's own traces: kiln's key in `authorized_keys`, cloud-init's instance state
    /// (`cloud-init clean --logs --machine-id`), SSH host keys made during the build, kiln's
    /// temporary files. Default true; `generalize = false` turns everything off.
    pub enabled: bool,
    /// Further operations asked for with `generalize = ["…"]`, in a fixed order, no repeats.
    pub extra: Vec<GeneralizeOp>,
}

impl Default for Generalize {
    fn default() -> Self {
        Generalize {
            enabled: true,
            extra: Vec::new(),
        }
    }
}

/// An operation beyond the default ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum GeneralizeOp {
    /// Empty `/etc/machine-id` (systemd makes a new one at first boot).
    MachineId,
    /// Delete log files under `/var/log` (and the systemd journal).
    Logs,
    /// Delete shell histories of root and every user.
    BashHistory,
    /// Empty `/tmp` and `/var/tmp`.
    Tmp,
    /// Delete downloaded packages (apt, dnf/yum, apk caches).
    PackageCache,
}

impl GeneralizeOp {
    pub const ALL: [(&'static str, GeneralizeOp); 5] = [
        ("machine-id", GeneralizeOp::MachineId),
        ("logs", GeneralizeOp::Logs),
        ("bash-history", GeneralizeOp::BashHistory),
        ("tmp", GeneralizeOp::Tmp),
        ("package-cache", GeneralizeOp::PackageCache),
    ];

    pub fn as_str(self) -> &'static str {
        GeneralizeOp::ALL
            .iter()
            .find(|(_, op)| *op == self)
            .map(|(name, _)| *name)
            .expect("every operation is listed")
    }
}

/// Where a bake starts. One variant per provider; more providers add variants.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Qemu(QemuSource),
}

impl Source {
    /// The provider that runs this source (`"qemu"`, later `"aws"`, …).
    pub fn provider(&self) -> &'static str {
        match self {
            Source::Qemu(_) => "qemu",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QemuSource {
    /// The base disk (absolute, exists). Never written to.
    pub disk: PathBuf,
    /// Given in the file, or detected from the disk's magic bytes.
    pub format: DiskFormat,
    /// Direct boot: kernel, initrd and kernel command line (all optional; `initrd` and
    /// `append` only with `kernel`).
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub append: Option<String>,
    /// Guest memory in MiB. Default 512.
    pub memory_mib: u32,
    /// Virtual CPUs. Default 1.
    pub cpus: u32,
    /// Default `Auto`: KVM when a probe shows it works, TCG otherwise.
    pub accelerator: Accelerator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accelerator {
    Auto,
    Kvm,
    Tcg,
}

/// How kiln reaches the guest.
#[derive(Debug, Clone, Serialize)]
pub struct Ssh {
    /// Default `root`.
    pub user: String,
    /// How long to wait for the guest to answer SSH after launch. Default 5 minutes.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
    /// How the guest's host key is checked. Default `Pinned`.
    pub host_key: HostKeyCheck,
}

/// `ssh.host_key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyCheck {
    /// kiln gives the guest a per-build host key through cloud-init and accepts only that one.
    Pinned,
    /// Accept whatever key the guest presents on first contact (for images that ignore the
    /// host key in cloud-init user-data).
    AcceptNew,
}

/// How the guest is stopped before its disk becomes the image.
#[derive(Debug, Clone, Serialize)]
pub struct Shutdown {
    /// Run over SSH. Default `poweroff`, or `sudo poweroff` when `ssh.user` is not root.
    pub command: String,
    /// How long to wait for the machine to stop after the command. Default 2 minutes.
    #[serde(with = "duration_secs")]
    pub timeout: Duration,
}

/// One provisioning or test step.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What people see: `name = "…"` from the file, or a default such as `shell` /
    /// `file quickstart/motd` derived from the definition.
    pub name: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Shell(ShellStep),
    File(FileStep),
    Collect(CollectStep),
}

impl StepKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            StepKind::Shell(_) => "shell",
            StepKind::File(_) => "file",
            StepKind::Collect(_) => "collect",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ShellStep {
    pub body: ShellBody,
    /// The inline lines as written in kiln.toml, before interpolation: what titles, plans
    /// and manifests show, so that an interpolated value (a token) never appears there.
    /// Empty for a script. Not part of the step's identity (the interpolated body is).
    #[serde(skip)]
    pub written: Vec<String>,
    /// Exported to the command, in this order.
    pub env: BTreeMap<String, String>,
    /// `cd` here before running (guest path).
    pub workdir: Option<String>,
    /// Run through `sudo -n` (for guests whose SSH user is not root).
    pub sudo: bool,
    /// Fail the step when it runs longer. Default: none.
    #[serde(with = "opt_duration_secs")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellBody {
    /// Lines run by `/bin/sh -e`, in order.
    Inline(Vec<String>),
    /// A local script (absolute, exists), uploaded and run.
    Script(PathBuf),
}

/// Upload a local file or directory into the guest.
#[derive(Debug, Clone, Serialize)]
pub struct FileStep {
    /// Local (absolute, exists); a file or a directory.
    pub from: PathBuf,
    /// Guest path. A path ending in `/` means "into this directory".
    pub to: String,
}

/// Download a guest file or directory into a local directory.
#[derive(Debug, Clone, Serialize)]
pub struct CollectStep {
    /// Guest path.
    pub from: String,
    /// Local directory (absolute); created when missing.
    pub to: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    /// Default `qcow2`.
    pub format: DiskFormat,
    /// qcow2 compression (`qemu-img convert -c`). Default false; an error with `raw`.
    pub compress: bool,
    /// File name inside `<project.output_dir>/<image.name>/`. Default `<image>.<format>`.
    pub file_name: String,
}

mod duration_secs {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

mod opt_duration_secs {
    use std::time::Duration;

    pub(crate) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
