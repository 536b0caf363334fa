//! The `qemu` provider: local build machines, kiln's embedded default.
//!
//! Launch = a qcow2 overlay on the base disk (the base is never written), a NoCloud seed
//! served over HTTP with the per-build key, and a QEMU process with user-mode networking whose
//! only forwarded port is SSH on 127.0.0.1. Capture = `qemu-img convert` of the overlay chain.
//! Every resource (overlay, seed port, process) is journaled before it exists; the process is
//! named `kiln-<run>-<image>` so `gc` can prove a pid is still ours before killing it.

mod accel;
mod process;
mod seed;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use kiln_config::{DiskFormat, Source};
use serde_json::json;
use tokio::process::{Child, Command};

pub use accel::{Accel, AccelDecision};
use seed::{Seed, SeedServer};

use super::{
    CaptureRequest, Captured, LaunchRequest, Machine, MachineFacts, Provider, ProviderError,
    Resources, SshEndpoint, Tracked, data,
};
use crate::journal::Resource;

pub const NAME: &str = "qemu";

/// How long QEMU gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

/// The host tools this provider runs.
#[derive(Debug, Clone)]
pub struct QemuProvider {
    system: PathBuf,
    img: PathBuf,
}

impl QemuProvider {
    /// `KILN_QEMU` / `KILN_QEMU_IMG` override the binaries found on PATH.
    pub fn from_env() -> QemuProvider {
        QemuProvider {
            system: std::env::var_os("KILN_QEMU")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-system-x86_64")),
            img: std::env::var_os("KILN_QEMU_IMG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("qemu-img")),
        }
    }
}

async fn qemu_img(img: &Path, args: &[&std::ffi::OsStr]) -> Result<(), ProviderError> {
    {
        let out = Command::new(img)
            .args(args)
            .stdin(Stdio::null())
            // A cancelled capture drops this future; the convert must not go on writing the
            // partial output that cleanup is removing.
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| missing_tool(img, e))?;
        if !out.status.success() {
            return Err(ProviderError::other(
                NAME,
                format!(
                    "qemu-img {} failed ({}): {}",
                    args.first()
                        .map(|a| a.to_string_lossy())
                        .unwrap_or_default(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(())
    }
}

fn missing_tool(tool: &Path, e: std::io::Error) -> ProviderError {
    if e.kind() == std::io::ErrorKind::NotFound {
        ProviderError::NotFound {
            what: format!("`{}`", tool.display()),
            hint: Some(
                "install QEMU: scripts/setup.sh, or apt-get install qemu-system-x86 qemu-utils"
                    .into(),
            ),
        }
    } else {
        ProviderError::io(NAME, format!("run {}", tool.display()), e)
    }
}

fn free_port() -> Result<u16, ProviderError> {
    // Ask the kernel for a free port, then hand it to QEMU. Another process could take it in
    // between; QEMU then fails to set up the forward and the launch is retried.
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
        .map_err(|e| ProviderError::io(NAME, "reserve a local port", e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| ProviderError::io(NAME, "reserve a local port", e))?
        .port())
}

#[async_trait]
impl Provider for QemuProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn launch(
        &self,
        req: &LaunchRequest<'_>,
        res: &Resources,
    ) -> Result<Box<dyn Machine>, ProviderError> {
        let Source::Qemu(src) = &req.image.source;
        let decision = accel::decide(&self.system, src.accelerator).await?;
        res.events().emit(crate::events::Event::Note {
            image: Some(req.image.name.clone()),
            message: format!("accelerator: {} ({})", decision.accel, decision.reason),
        });

        // 1. The overlay: all writes go here, the base stays untouched.
        let overlay = req.scratch.join("disk.qcow2");
        let overlay_res = res.creating(
            NAME,
            "disk-overlay",
            overlay.display().to_string(),
            Default::default(),
        )?;
        let mut machine = QemuMachine {
            res: res.clone(),
            img: self.img.clone(),
            name: req.machine_name.clone(),
            overlay: Some((overlay.clone(), overlay_res)),
            child: None,
            seed: None,
            ssh_port: 0,
            console: req.scratch.join("console.log"),
            qemu_log: req.scratch.join("qemu.log"),
            decision: decision.clone(),
            kept: false,
        };
        // The overlay records its backing file by path; resolve symlinks (a `current` link
        // may move while the machine runs) so it keeps pointing at the same bytes.
        let base = std::fs::canonicalize(&src.disk).unwrap_or_else(|_| src.disk.clone());
        qemu_img(
            &self.img,
            &[
                "create".as_ref(),
                "-q".as_ref(),
                "-f".as_ref(),
                "qcow2".as_ref(),
                "-F".as_ref(),
                src.format.as_str().as_ref(),
                "-b".as_ref(),
                base.as_os_str(),
                overlay.as_os_str(),
            ],
        )
        .await?;

        // 2. The NoCloud seed with the per-build key.
        let seed = Seed::for_key(
            &req.machine_name,
            &req.image.name,
            &req.image.ssh.user,
            &req.ssh_public_key,
            req.host_key.as_ref(),
        );
        let server = SeedServer::start(seed)
            .await
            .map_err(|e| ProviderError::io(NAME, "start the NoCloud seed server", e))?;
        let seed_res = res.creating(
            super::local::NAME,
            "port",
            format!("127.0.0.1:{}", server.port()),
            data(json!({"purpose": "nocloud-seed"})),
        )?;
        machine.seed = Some((server, seed_res));

        // 3. QEMU itself. A port taken between our probe and QEMU's bind makes QEMU exit at
        // once with a hostfwd error; try a few ports before giving up.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            match self.spawn(req, src, &mut machine, port, &decision).await {
                Ok(()) => return Ok(Box::new(machine)),
                Err(SpawnError::PortTaken(msg)) => last_err = Some(msg),
                Err(SpawnError::Failed(e)) => {
                    machine.destroy().await.ok();
                    return Err(e);
                }
            }
        }
        machine.destroy().await.ok();
        Err(ProviderError::other(
            NAME,
            format!(
                "QEMU could not forward an SSH port: {}",
                last_err.unwrap_or_default()
            ),
        ))
    }

    async fn destroy(&self, resource: &Resource) -> Result<(), ProviderError> {
        match resource.kind.as_str() {
            "qemu-process" => {
                for pid in qemu_pids(resource) {
                    tokio::task::spawn_blocking(move || process::terminate(pid, TERM_GRACE))
                        .await
                        .ok();
                }
                Ok(())
            }
            "disk-overlay" => match std::fs::remove_file(&resource.id) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ProviderError::io(
                    NAME,
                    format!("remove overlay {}", resource.id),
                    e,
                )),
            },
            other => Err(ProviderError::NotSupported {
                provider: NAME.into(),
                what: format!("removing resources of kind `{other}`"),
            }),
        }
    }

    async fn exists(&self, resource: &Resource) -> Result<bool, ProviderError> {
        Ok(match resource.kind.as_str() {
            "qemu-process" => !qemu_pids(resource).is_empty(),
            "disk-overlay" => Path::new(&resource.id).exists(),
            _ => false,
        })
    }
}

/// The live processes a `qemu-process` record names: its pid if that is still the same QEMU,
/// and every process carrying its marker (the pid may never have been recorded, and a
/// `KILN_QEMU` wrapper may have QEMU as its child).
fn qemu_pids(resource: &Resource) -> Vec<u32> {
    let marker = resource.id.as_str();
    let pid = resource.data.get("pid").and_then(|v| v.as_u64());
    let start = resource.data.get("start_time").and_then(|v| v.as_u64());
    let mut pids = Vec::new();
    if let Some(pid) = pid.map(|p| p as u32)
        && process::alive(pid)
        && process::is_our_qemu(pid, marker, start)
    {
        pids.push(pid);
    }
    for other in process::find_by_marker(marker) {
        if !pids.contains(&other) {
            pids.push(other);
        }
    }
    pids
}

enum SpawnError {
    PortTaken(String),
    Failed(ProviderError),
}

impl From<ProviderError> for SpawnError {
    fn from(e: ProviderError) -> Self {
        SpawnError::Failed(e)
    }
}

impl From<crate::journal::JournalError> for SpawnError {
    fn from(e: crate::journal::JournalError) -> Self {
        SpawnError::Failed(e.into())
    }
}

impl QemuProvider {
    async fn spawn(
        &self,
        req: &LaunchRequest<'_>,
        src: &kiln_config::QemuSource,
        machine: &mut QemuMachine,
        ssh_port: u16,
        decision: &AccelDecision,
    ) -> Result<(), SpawnError> {
        let seed_url = machine
            .seed
            .as_ref()
            .map(|(s, _)| s.guest_url())
            .unwrap_or_default();
        // `nocloud-net`, not `nocloud`: cloud-init up to 23.x (Debian 11/12, Ubuntu 20.04-22.04)
        // refuses HTTP seeds under `nocloud` ("Seed from http://… not supported"), falls back
        // to DataSourceNone and never installs the key; every version accepts `nocloud-net`.
        let nocloud = format!("ds=nocloud-net;s={seed_url}");
        let overlay = machine
            .overlay
            .as_ref()
            .map(|(p, _)| p.clone())
            .expect("overlay created before spawn");

        let mut cmd = Command::new(&self.system);
        // `-name NAME,process=NAME` puts the marker in argv (what `gc` checks) and in `ps`.
        cmd.arg("-name")
            .arg(format!("{0},process={0}", machine.name))
            .args(["-nodefaults", "-display", "none", "-no-user-config"])
            .args(["-accel", decision.accel.qemu_name()]);
        if decision.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        }
        cmd.arg("-m")
            .arg(src.memory_mib.to_string())
            .arg("-smp")
            .arg(src.cpus.to_string());
        if let Some(kernel) = &src.kernel {
            cmd.arg("-kernel").arg(kernel);
            if let Some(initrd) = &src.initrd {
                cmd.arg("-initrd").arg(initrd);
            }
            let append = src.append.as_deref().unwrap_or("");
            cmd.arg("-append").arg(format!("{append} {nocloud}").trim());
        }
        // The SMBIOS serial carries the seed for images that boot their own kernel; QEMU
        // needs commas doubled inside option values (there are none in the URL today).
        cmd.arg("-smbios")
            .arg(format!("type=1,serial={}", nocloud.replace(',', ",,")));
        cmd.arg("-drive").arg(format!(
            "file={},if=virtio,format=qcow2,discard=unmap",
            qemu_escape(&overlay)
        ));
        // Without an entropy source the guest's sshd waits seconds for its RNG to seed.
        cmd.args(["-device", "virtio-rng-pci"]);
        cmd.arg("-netdev")
            .arg(format!("user,id=n0,hostfwd=tcp:127.0.0.1:{ssh_port}-:22"))
            .args(["-device", "virtio-net-pci,netdev=n0,romfile="]);
        cmd.arg("-serial")
            .arg(format!("file:{}", qemu_escape(&machine.console)));
        let log = std::fs::File::create(&machine.qemu_log)
            .map_err(|e| ProviderError::io(NAME, "create the QEMU log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| ProviderError::io(NAME, "create the QEMU log", e))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            // Its own process group: a Ctrl-C in the terminal reaches kiln, which then stops
            // QEMU in order, instead of killing QEMU under a half-written disk.
            .process_group(0)
            .kill_on_drop(false);

        let mut proc_res = machine.res.creating(
            NAME,
            "qemu-process",
            machine.name.clone(),
            data(json!({ "ssh_port": ssh_port, "scratch": req.scratch })),
        )?;
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                // Nothing was started: close the record written for it.
                machine.res.removed(&proc_res)?;
                return Err(missing_tool(&self.system, e).into());
            }
        };
        let pid = child.id().unwrap_or_default();
        let start = process::start_time(pid);
        machine.res.update(
            &mut proc_res,
            data(json!({ "pid": pid, "start_time": start })),
        )?;
        machine.child = Some((child, proc_res));
        machine.ssh_port = ssh_port;

        // QEMU fails fast on bad options and busy ports; catch that here rather than as an SSH
        // timeout minutes later.
        tokio::time::sleep(Duration::from_millis(150)).await;
        if let Some(reason) = machine.exited() {
            let log = std::fs::read_to_string(&machine.qemu_log).unwrap_or_default();
            machine.reap_process().await;
            if log.contains("hostfwd") || log.contains("Could not set up host forwarding") {
                return Err(SpawnError::PortTaken(log.trim().to_string()));
            }
            return Err(SpawnError::Failed(ProviderError::other(
                NAME,
                format!("QEMU exited at start ({reason}): {}", log.trim()),
            )));
        }
        Ok(())
    }
}

/// What a guest's console says about why SSH never answered, for the causes that are known
/// to print something recognisable.
fn diagnose_console(console: &str) -> Option<String> {
    const CAUSES: &[(&[&str], &str)] = &[
        (
            &[
                "not supported by DataSourceNoCloud",
                "not supported by DataSourceNoCloudNet",
            ],
            "cloud-init refused kiln's NoCloud seed URL, so the build key was never installed",
        ),
        (
            &["Datasource DataSourceNone", "DataSourceNone"],
            "cloud-init found no datasource and fell back to DataSourceNone, so the build key \
             was never installed; check that the image's cloud-init allows NoCloud \
             (`datasource_list` in /etc/cloud/cloud.cfg.d/)",
        ),
        (
            &["no NoCloud seed found", "tiny-nocloud: cannot fetch"],
            "the guest's NoCloud agent did not get kiln's seed, so the build key was never \
             installed",
        ),
        (
            &[
                "sshd: no hostkeys available",
                "Failed to start ssh.service",
                "Failed to start OpenBSD Secure Shell server",
            ],
            "the guest's SSH server did not start (no host keys?)",
        ),
    ];
    CAUSES
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| console.contains(n)))
        .map(|(_, cause)| (*cause).to_string())
}

/// QEMU option values use ',' as a separator; a literal comma is written twice.
fn qemu_escape(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// A QEMU build machine.
#[derive(Debug)]
pub struct QemuMachine {
    res: Resources,
    img: PathBuf,
    name: String,
    overlay: Option<(PathBuf, Tracked)>,
    child: Option<(Child, Tracked)>,
    seed: Option<(SeedServer, Tracked)>,
    ssh_port: u16,
    console: PathBuf,
    qemu_log: PathBuf,
    decision: AccelDecision,
    kept: bool,
}

impl QemuMachine {
    /// Stop the QEMU process if it runs and record that it is gone.
    async fn reap_process(&mut self) {
        if let Some((mut child, tracked)) = self.child.take() {
            if matches!(child.try_wait(), Ok(None))
                && let Some(pid) = child.id()
            {
                tokio::task::spawn_blocking(move || process::terminate(pid, TERM_GRACE))
                    .await
                    .ok();
            }
            let _ = child.wait().await;
            // What a wrapper (`KILN_QEMU`) started and left behind carries the marker too.
            let marker = self.name.clone();
            tokio::task::spawn_blocking(move || {
                for pid in process::find_by_marker(&marker) {
                    process::terminate(pid, TERM_GRACE);
                }
            })
            .await
            .ok();
            let _ = self.res.removed(&tracked);
        }
    }
}

#[async_trait]
impl Machine for QemuMachine {
    fn ssh_endpoint(&self) -> SshEndpoint {
        SshEndpoint {
            host: "127.0.0.1".into(),
            port: self.ssh_port,
        }
    }

    fn facts(&self) -> MachineFacts {
        data(json!({
            "accelerator": self.decision.accel.qemu_name(),
            "accelerator_reason": self.decision.reason,
            "ssh_port": self.ssh_port,
        }))
    }

    fn console_tail(&self, lines: usize) -> Vec<String> {
        let text = std::fs::read(&self.console).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let all: Vec<String> = text
            .lines()
            .map(|l| {
                l.chars()
                    .filter(|c| !c.is_control() || *c == '\t')
                    .collect::<String>()
            })
            .filter(|l| !l.trim().is_empty())
            .collect();
        all[all.len().saturating_sub(lines)..].to_vec()
    }

    fn diagnose_unreachable(&self) -> Option<String> {
        let text = std::fs::read(&self.console).ok()?;
        diagnose_console(&String::from_utf8_lossy(&text))
    }

    fn exited(&mut self) -> Option<String> {
        let (child, _) = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    async fn wait_stopped(&mut self, timeout: Duration) -> Result<(), ProviderError> {
        let Some((child, tracked)) = self.child.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(_) => {
                let tracked = tracked.clone();
                self.child = None;
                self.res.removed(&tracked)?;
                Ok(())
            }
            Err(_) => Err(ProviderError::Timeout {
                what: "the guest's shutdown".into(),
                waited: timeout,
            }),
        }
    }

    async fn capture(&mut self, req: &CaptureRequest<'_>) -> Result<Captured, ProviderError> {
        let (overlay, _) = self
            .overlay
            .as_ref()
            .ok_or_else(|| ProviderError::other(NAME, "the overlay disk is gone"))?;
        let format = req.output.format;
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "convert".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-O".as_ref(),
            format.as_str().as_ref(),
        ];
        if req.output.compress && format == DiskFormat::Qcow2 {
            args.push("-c".as_ref());
        }
        args.push(overlay.as_os_str());
        args.push(req.path.as_os_str());
        qemu_img(&self.img, &args).await?;
        Ok(Captured::LocalFile {
            path: req.path.to_path_buf(),
            format: format.as_str().to_string(),
        })
    }

    async fn destroy(&mut self) -> Result<(), ProviderError> {
        if self.kept {
            return Ok(());
        }
        self.reap_process().await;
        if let Some((server, tracked)) = self.seed.take() {
            drop(server);
            self.res.removed(&tracked)?;
        }
        if let Some((path, tracked)) = self.overlay.take() {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.overlay = Some((path.clone(), tracked));
                    return Err(ProviderError::io(
                        NAME,
                        format!("remove overlay {}", path.display()),
                        e,
                    ));
                }
            }
            self.res.removed(&tracked)?;
        }
        Ok(())
    }

    fn keep(&mut self) -> String {
        self.kept = true;
        format!(
            "QEMU `{}` keeps running; its SSH port is 127.0.0.1:{}",
            self.name, self.ssh_port
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_name_the_likely_cause() {
        // What cloud-init 22.4 prints when it refuses an HTTP seed under `ds=nocloud`.
        let refused = "[   12.3] cloud-init[210]: 2026-12-01 ... Seed from http://10.0.2.2:4321/ \
                       not supported by DataSourceNoCloud [seed=None][dsmode=net]\n";
        assert!(
            diagnose_console(refused)
                .unwrap()
                .starts_with("cloud-init refused kiln's NoCloud seed URL")
        );
        let none = "cloud-init[300]: ... used Datasource DataSourceNone.  Up 40.1 seconds\n";
        assert!(
            diagnose_console(none)
                .unwrap()
                .contains("fell back to DataSourceNone")
        );
        let tiny = "tiny-nocloud: cannot fetch http://10.0.2.2:1/user-data: connection refused\n";
        assert!(diagnose_console(tiny).unwrap().contains("NoCloud agent"));
        assert_eq!(diagnose_console("Welcome to Debian\nlogin:\n"), None);
    }
}
