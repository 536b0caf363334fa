//! Shared helpers for kiln's integration tests: the tiny guest, temp projects, the real binary.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// The tiny test guest built by scripts/tiny-guest.sh, or `None` (after saying why) when it
/// is missing outside CI. In CI (`CI=true`) a missing guest or QEMU fails the test: a peer the
/// suite needs is never skipped silently there.
pub fn tiny_guest() -> Option<PathBuf> {
    guest("KILN_TINY_GUEST", "tiny-guest", "scripts/tiny-guest.sh")
}

/// The cloud-init test guest built by scripts/cloud-guest.sh (a Debian genericcloud-like
/// disk), with the same rules as [`tiny_guest`].
pub fn cloud_guest() -> Option<PathBuf> {
    guest(
        "KILN_CLOUD_GUEST",
        "cloud-guest",
        "scripts/cloud-guest.sh as root",
    )
}

/// A guest directory holding `base.qcow2`: `$VAR`, else `<kiln cache>/<cached>/current`.
fn guest(var: &str, cached: &str, build_with: &str) -> Option<PathBuf> {
    let dir = std::env::var_os(var).map(PathBuf::from).or_else(|| {
        let cache = std::env::var_os("KILN_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kiln")))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kiln")))?;
        Some(cache.join(cached).join("current"))
    });
    let problem = match &dir {
        None => Some(format!("no {var} and no cache directory")),
        Some(d) if !d.join("base.qcow2").exists() => Some(format!(
            "{cached} not found in {} (run {build_with})",
            d.display()
        )),
        Some(_) if !on_path("qemu-system-x86_64") => {
            Some("qemu-system-x86_64 is not installed (run scripts/setup.sh)".to_string())
        }
        Some(_) => None,
    };
    match problem {
        None => dir,
        Some(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("this test needs a QEMU guest: {why}")
        }
        Some(why) => {
            #[expect(clippy::print_stderr, reason = "a skip must say why")]
            {
                eprintln!("SKIPPED (not in CI): {why}");
            }
            None
        }
    }
}

pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// A kiln project in a temp dir, baking the tiny guest.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub guest: PathBuf,
}

#[derive(Default)]
pub struct Steps<'a> {
    pub provision: &'a str,
    pub test: &'a str,
    /// Extra keys inside the image table (`ssh = …`), or "".
    pub image_extra: &'a str,
    /// Appended to the kernel command line.
    pub append_extra: &'a str,
}

impl Project {
    pub fn new(guest: &Path, steps: Steps<'_>) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("kiln-test-")
            .tempdir()
            .unwrap();
        let append = std::fs::read_to_string(guest.join("append.txt"))
            .unwrap_or_else(|_| "root=/dev/vda console=ttyS0 rw quiet".into());
        let append = format!("{} {}", append.trim(), steps.append_extra)
            .trim()
            .to_string();
        let ssh = if steps.image_extra.contains("ssh =") {
            String::new()
        } else {
            "ssh = { timeout = \"2m\" }\n".to_string()
        };
        let toml = format!(
            r#"[project]
name = "test"

[vars]
guest = "{guest}"

[[image]]
name = "tiny"
source = {{ qemu = {{ disk = "{{{{ guest }}}}/base.qcow2", kernel = "{{{{ guest }}}}/vmlinuz", initrd = "{{{{ guest }}}}/initrd.gz", append = "{append}", memory = 256 }} }}
{ssh}shutdown = {{ command = "sync; mount -o remount,ro /; poweroff -f", timeout = "1m" }}
{extra}
provision = [
{provision}
]
test = [
{test}
]
"#,
            guest = guest.display(),
            extra = steps.image_extra,
            provision = steps.provision,
            test = steps.test,
        );
        std::fs::write(dir.path().join("kiln.toml"), toml).unwrap();
        Project {
            dir,
            guest: guest.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, contents: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    pub fn kiln(&self) -> Command {
        let mut cmd = Command::new(KILN);
        cmd.current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("KILN_LOG")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.kiln().args(args).output().unwrap()
    }

    /// QEMU processes started for this project (their drive lives under its .kiln/).
    pub fn qemu_pids(&self) -> Vec<u32> {
        qemu_pids_mentioning(&self.path().display().to_string())
    }

    /// Journals with entries, scratch dirs, overlays: whatever a clean state must not have.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        for sub in ["journal", "tmp"] {
            let d = self.path().join(".kiln").join(sub);
            if let Ok(entries) = std::fs::read_dir(&d) {
                found.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        }
        found
    }

    pub fn assert_clean(&self) {
        assert_eq!(
            self.qemu_pids(),
            Vec::<u32>::new(),
            "QEMU processes left behind"
        );
        assert_eq!(self.leftovers(), Vec::<PathBuf>::new(), "state left behind");
    }
}

/// QEMU processes (by program name) whose command line mentions `needle`.
pub fn qemu_pids_mentioning(needle: &str) -> Vec<u32> {
    processes_mentioning(needle)
        .into_iter()
        .filter(|(_, cmdline)| cmdline.starts_with("qemu-system"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Live (not zombie) processes whose command line mentions `needle`, whatever the program
/// (QEMU, a wrapper), with that command line.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie && pid != std::process::id() {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Run a debugfs request (`cat /etc/x`, `ls -p /tmp`) against the ext4 filesystem at byte
/// `offset` of a disk image, without mounting anything: convert to raw, ask debugfs.
pub fn debugfs(image: &Path, request: &str, offset: u64) -> String {
    let raw = image.with_extension("raw-for-test");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(image)
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success(), "qemu-img convert failed");
    let out = Command::new("debugfs")
        .args(["-R", request])
        .arg(format!("{}?offset={offset}", raw.display()))
        .output()
        .unwrap();
    std::fs::remove_file(&raw).unwrap();
    assert!(out.status.success(), "debugfs: {}", text(&out.stderr));
    text(&out.stdout)
}

/// A file out of an image whose whole disk is one ext4 filesystem (the tiny guest's).
pub fn read_from_image(image: &Path, guest_path: &str) -> String {
    debugfs(image, &format!("cat {guest_path}"), 0)
}

/// A kiln run in the background with `--json`, its events read as they come.
pub struct Running {
    pub child: Child,
    events: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    break;
                }
            }
        });
        Running {
            child,
            events: rx,
            seen: Vec::new(),
        }
    }

    /// Wait (bounded) for an event matching `pred`; panics with what was seen otherwise.
    pub fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) => {
                    let hit = pred(&v);
                    self.seen.push(v);
                    if hit {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let out = self.child.wait_with_output_lossy();
                    panic!("never saw {what}; events: {:#?}\nstderr: {out}", self.seen);
                }
            }
        }
    }

    /// Wait (bounded) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

trait WaitLossy {
    fn wait_with_output_lossy(&mut self) -> String;
}

impl WaitLossy for Child {
    fn wait_with_output_lossy(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }
}

pub fn is_event(v: &serde_json::Value, event: &str, step: Option<&str>) -> bool {
    v["event"] == event && step.is_none_or(|s| v["step"] == s)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
