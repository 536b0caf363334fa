//! Choosing between KVM and TCG.
//!
//! KVM is the normal case on a workstation and must stay the default when it works. But a
//! `/dev/kvm` that opens is not proof: nested or paravirtual KVMs (e.g. `kvm_pvm`) accept the
//! device and then kill real guests with "KVM internal error". So `auto` runs a short probe
//! boot under KVM and only uses it if the probe passes; the verdict is cached per host kernel,
//! boot and QEMU binary so the probe costs once. `kvm` and `tcg` in the file skip the probe.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_config::Accelerator;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::NAME;
use crate::provider::ProviderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// The accelerator to use and why (both go to the log and the manifest).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccelDecision {
    pub accel: Accel,
    pub reason: String,
}

const KVM_DEVICE: &str = "/dev/kvm";

fn kvm_openable() -> Result<(), String> {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(KVM_DEVICE)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(format!("no {KVM_DEVICE}")),
        Err(e) => Err(format!("{KVM_DEVICE} cannot be opened: {e}")),
    }
}

pub(crate) async fn decide(
    qemu: &Path,
    requested: Accelerator,
) -> Result<AccelDecision, ProviderError> {
    match requested {
        Accelerator::Tcg => Ok(AccelDecision {
            accel: Accel::Tcg,
            reason: "accelerator = \"tcg\" in the config".into(),
        }),
        Accelerator::Kvm => match kvm_openable() {
            Ok(()) => Ok(AccelDecision {
                accel: Accel::Kvm,
                reason: "accelerator = \"kvm\" in the config".into(),
            }),
            Err(why) => Err(ProviderError::other(
                NAME,
                format!("accelerator = \"kvm\" was asked for, but {why}"),
            )),
        },
        Accelerator::Auto => Ok(auto(qemu).await),
    }
}

async fn auto(qemu: &Path) -> AccelDecision {
    if let Err(why) = kvm_openable() {
        return AccelDecision {
            accel: Accel::Tcg,
            reason: format!("{why}; using software emulation"),
        };
    }
    if paravirtual_only() {
        return AccelDecision {
            accel: Accel::Tcg,
            reason: "only a paravirtual KVM (kvm_pvm) is loaded; using software emulation".into(),
        };
    }
    let key = cache_key(qemu).await;
    let cache = cache_path();
    if let Some(hit) = read_cache(&cache, &key) {
        return hit;
    }
    let decision = match probe(qemu).await {
        Ok(()) => AccelDecision {
            accel: Accel::Kvm,
            reason: "KVM probe boot passed".into(),
        },
        Err(why) => AccelDecision {
            accel: Accel::Tcg,
            reason: format!("KVM probe failed ({why}); using software emulation"),
        },
    };
    write_cache(&cache, &key, &decision);
    decision
}

/// The probe: QEMU's own firmware under KVM with nothing to boot. SeaBIOS finds no boot
/// device and resets, and `-no-reboot` turns the reset into a clean exit: on a working KVM
/// that takes a fraction of a second. Staying alive is not proof: paravirtual KVMs (kvm_pvm)
/// run the firmware thousands of times slower than real hardware without ever failing, and
/// would pass a "still running after N s" test. So KVM counts only if QEMU exits 0 in time.
async fn probe(qemu: &Path) -> Result<(), String> {
    let mut child = Command::new(qemu)
        .args(["-accel", "kvm", "-cpu", "host"])
        .args(["-m", "32", "-nodefaults", "-no-user-config"])
        .args(["-display", "none", "-serial", "none", "-monitor", "none"])
        .args(["-no-reboot", "-boot", "strict=on,reboot-timeout=0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    let limit = Duration::from_millis(1500);
    match tokio::time::timeout(limit, child.wait()).await {
        Err(_) => {
            let _ = child.kill().await;
            Err(format!(
                "the firmware did not finish within {} s; KVM is too slow or stuck here",
                limit.as_secs_f32()
            ))
        }
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(status) => {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                use tokio::io::AsyncReadExt;
                let _ = stderr.read_to_string(&mut err).await;
            }
            let first = err
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .to_string();
            Err(format!(
                "QEMU exited early ({}): {first}",
                status.map(|s| s.to_string()).unwrap_or_default()
            ))
        }
    }
}

/// A paravirtual KVM (`kvm_pvm`) without a hardware KVM module cannot run stock kernels at
/// usable speed; no probe needed to know that.
fn paravirtual_only() -> bool {
    let module = |m: &str| Path::new("/sys/module").join(m).exists();
    module("kvm_pvm") && !module("kvm_intel") && !module("kvm_amd")
}

fn cache_path() -> PathBuf {
    crate::paths::cache_dir().join("accel-probe.json")
}

async fn cache_key(qemu: &Path) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let version = Command::new(qemu)
        .arg("--version")
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default();
    // The boot id makes a reboot (a new kernel module, a changed /dev/kvm) probe again.
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    format!(
        "{} | {} | {} | {}",
        kernel.trim(),
        boot.trim(),
        version.trim(),
        qemu.display()
    )
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    decision: AccelDecision,
}

fn read_cache(path: &Path, key: &str) -> Option<AccelDecision> {
    let entry: CacheEntry = crate::paths::read_cache(path)?;
    (entry.key == key).then(|| AccelDecision {
        reason: format!("{} (cached)", entry.decision.reason),
        ..entry.decision
    })
}

fn write_cache(path: &Path, key: &str, decision: &AccelDecision) {
    let entry = CacheEntry {
        key: key.to_string(),
        decision: decision.clone(),
    };
    crate::paths::write_cache(path, &entry);
}
