//! A real dropbear server on 127.0.0.1 for the integration tests.
//!
//! Dropbear reads `~/.ssh/authorized_keys` from the home directory in the password database
//! and has no option to look elsewhere, and the tests must not touch the real `~/.ssh`. So
//! each server runs in its own mount namespace (`unshare --mount`) in which a copy of
//! `/etc/passwd` with one extra user, `kiln`, whose home is a temporary directory, is
//! bind-mounted over the real one. Nothing outside that namespace sees the change, and it
//! disappears with the server. This needs root (as CI has); the `kiln` user has uid 0, so
//! logging in as it changes nothing but the home directory and the shell.
//!
//! Two flavours of guest userland are offered: the host's (dash, GNU tar, coreutils), standing
//! in for a cloud image, and busybox (`sh`, `tar`, `cat`, `mkdir`, `chmod`, `sleep` and
//! nothing else on PATH), standing in for kiln's tiny guest.
//!
//! Each server has an ed25519 host key made by `dropbearkey`, and [`Peer::connect`] pins it,
//! so every test also checks host key verification; tests can add host keys of other types.
//!
//! Servers are started and stopped by process id: each runs in its own pid namespace under
//! an `unshare` process that the test kills when the [`Peer`] is dropped, which ends dropbear
//! and everything the tests ran on it. A test that cannot start its server fails when
//! `CI=true` and is skipped, with the reason on stderr, otherwise.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_ssh::{ConnectOptions, HostKeyPolicy, KeyPair, PublicKey, Session, Target};

/// The guest userland a peer offers to commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// The host's shell and tools (dash, GNU tar).
    Host,
    /// busybox applets only, like kiln's small guest.
    Busybox,
}

const USER: &str = "kiln";

/// A host key file made by `dropbearkey`, with what `dropbearkey -y` says about it.
#[derive(Debug, Clone)]
pub(crate) struct DropbearKey {
    path: PathBuf,
    pub(crate) public: PublicKey,
    /// As `dropbearkey -y` prints it (`SHA256:…`): computed by dropbear, not by us.
    pub(crate) fingerprint: String,
}

/// A dropbear server for one test.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) port: u16,
    /// The `kiln` user's home directory, where relative guest paths land.
    pub(crate) home: PathBuf,
    /// The ed25519 host key the server always has.
    pub(crate) host_key: DropbearKey,
    /// Further host keys, added with [`Peer::add_host_key`].
    extra_host_keys: Vec<DropbearKey>,
    dir: tempfile::TempDir,
    dropbear: PathBuf,
    dropbearkey: PathBuf,
    child: Option<Child>,
}

impl Peer {
    /// Prepares a server (host key, user, home) on a free port without starting it. `None`
    /// means the test should be skipped (never when `CI=true`).
    pub(crate) fn prepare(flavour: Flavour) -> Option<Peer> {
        let dropbear = find_tool("dropbear", &["/usr/sbin/dropbear", "/usr/bin/dropbear"])?;
        let dropbearkey = find_tool(
            "dropbearkey",
            &["/usr/bin/dropbearkey", "/usr/sbin/dropbearkey"],
        )?;
        find_tool("unshare", &["/usr/bin/unshare", "/bin/unshare"])?;
        if !nix::unistd::geteuid().is_root() {
            // An unprivileged user namespace could do the mounts, but dropbear also calls
            // setgroups() when it logs a user in, which such a namespace never allows.
            return unavailable(
                "the tests must run as root: dropbear switches to the test user with \
                 setgroups(), which an unprivileged user namespace does not allow",
            );
        }
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let root = dir.path();
        let host_key = make_host_key(&dropbearkey, "ed25519", &root.join("host_key"))?;

        let home = root.join("home");
        fs::create_dir_all(home.join(".ssh")).unwrap();
        // dropbear refuses keys in group- or world-writable places.
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(home.join(".ssh"), fs::Permissions::from_mode(0o700)).unwrap();

        let shell = match flavour {
            Flavour::Host => PathBuf::from("/bin/sh"),
            Flavour::Busybox => busybox_shell(root)?,
        };
        let mut passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
        // uid 0: the tests run as root, so dropbear's switch to this user changes nothing
        // but the home directory.
        passwd.push_str(&format!(
            "{USER}:x:0:0:kiln test:{}:{}\n",
            home.display(),
            shell.display()
        ));
        fs::write(root.join("passwd"), passwd).unwrap();
        let mut shells = fs::read_to_string("/etc/shells").unwrap_or_default();
        shells.push_str(&format!("{}\n", shell.display()));
        fs::write(root.join("shells"), shells).unwrap();

        Some(Peer {
            port: free_port(),
            home,
            host_key,
            extra_host_keys: Vec::new(),
            dir,
            dropbear,
            dropbearkey,
            child: None,
        })
    }

    /// Makes a host key of `kind` (a `dropbearkey -t` type) that the server does not use.
    pub(crate) fn make_host_key(&self, kind: &str, name: &str) -> DropbearKey {
        make_host_key(&self.dropbearkey, kind, &self.dir.path().join(name))
            .expect("dropbearkey worked for the first key")
    }

    /// Gives the server (not started yet) another host key, of `kind`.
    pub(crate) fn add_host_key(&mut self, kind: &str) -> DropbearKey {
        assert!(self.child.is_none(), "the server is already running");
        let key = self.make_host_key(kind, &format!("host_key_{kind}"));
        self.extra_host_keys.push(key.clone());
        key
    }

    /// Prepares and starts a server that accepts `key`.
    pub(crate) fn start_with_key(flavour: Flavour, key: &KeyPair) -> Option<Peer> {
        let mut peer = Peer::prepare(flavour)?;
        peer.authorize(key);
        peer.start()?;
        Some(peer)
    }

    /// Installs `key` in the user's `authorized_keys` (the server may already be running).
    pub(crate) fn authorize(&self, key: &KeyPair) {
        let path = self.home.join(".ssh/authorized_keys");
        let tmp = self.home.join(".ssh/authorized_keys.tmp");
        let mut file = fs::File::create(&tmp).unwrap();
        writeln!(file, "{}", key.public_openssh()).unwrap();
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .unwrap();
        drop(file);
        // Atomically, so that the server never reads a half-written file.
        fs::rename(tmp, path).unwrap();
    }

    /// Starts the server and waits until it accepts connections. `None` means skip.
    pub(crate) fn start(&mut self) -> Option<()> {
        assert!(self.child.is_none(), "the server is already running");
        let root = self.dir.path();
        let log = fs::File::create(root.join("dropbear.log")).unwrap();
        let mut command = Command::new("unshare");
        command
            // A pid namespace whose init dies with unshare (--kill-child), so that killing
            // unshare also ends every process the tests left running on the "guest".
            .args(["--pid", "--fork", "--kill-child"])
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(concat!(
                "mount --bind \"$1\" /etc/passwd && mount --bind \"$2\" /etc/shells && ",
                "dropbear=$3 port=$4 pid=$5 && shift 5 && ",
                // -F: foreground, -E: log to stderr, -s: no passwords, -m: no motd; the
                // remaining arguments are `-r FILE` for each host key.
                "exec \"$dropbear\" -F -E -s -m -p \"127.0.0.1:$port\" -P \"$pid\" \"$@\""
            ))
            .arg("sh")
            .arg(root.join("passwd"))
            .arg(root.join("shells"))
            .arg(&self.dropbear)
            .arg(self.port.to_string())
            .arg(root.join("dropbear.pid"));
        for key in std::iter::once(&self.host_key).chain(&self.extra_host_keys) {
            command.arg("-r").arg(&key.path);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return unavailable(&format!("cannot run unshare: {e}")),
        };
        self.child = Some(child);

        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Some(());
            }
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            if exited.is_some() || Instant::now() > deadline {
                let log = fs::read_to_string(root.join("dropbear.log")).unwrap_or_default();
                self.stop();
                return unavailable(&format!(
                    "dropbear did not start listening on {addr} ({exited:?}); its log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn target(&self) -> Target {
        Target {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: USER.to_owned(),
        }
    }

    /// Connects with a short timeout, pinning the server's ed25519 host key: the server is
    /// already up.
    pub(crate) async fn connect(&self, key: &KeyPair) -> Session {
        self.connect_with(key, HostKeyPolicy::Pinned(self.host_key.public.clone()))
            .await
    }

    /// Connects with a short timeout and `host_key`, expecting success.
    pub(crate) async fn connect_with(&self, key: &KeyPair, host_key: HostKeyPolicy) -> Session {
        let opts = ConnectOptions {
            timeout: Duration::from_secs(10),
            retry_interval: Duration::from_millis(100),
            ..ConnectOptions::new(host_key)
        };
        kiln_ssh::connect(&self.target(), key, &opts)
            .await
            .unwrap_or_else(|e| panic!("connect to dropbear: {e:?}\n{}", self.log()))
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dropbear.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL to unshare; --kill-child passes it on to the namespace's init, and the
            // kernel then ends every other process in the namespace.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Makes a host key with `dropbearkey -t kind` and reads its public half and fingerprint back
/// with `dropbearkey -y`. `None` means skip.
fn make_host_key(dropbearkey: &Path, kind: &str, path: &Path) -> Option<DropbearKey> {
    let status = Command::new(dropbearkey)
        .args(["-t", kind, "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run dropbearkey");
    if !status.success() {
        return unavailable(&format!("dropbearkey -t {kind} failed: {status}"));
    }
    let shown = Command::new(dropbearkey)
        .arg("-y")
        .arg("-f")
        .arg(path)
        .stderr(Stdio::inherit())
        .output()
        .expect("run dropbearkey -y");
    assert!(shown.status.success(), "dropbearkey -y: {}", shown.status);
    // "Public key portion is:\n<openssh line>\nFingerprint: SHA256:…\n"
    let text = String::from_utf8(shown.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-"))
        .unwrap_or_else(|| panic!("no public key in dropbearkey -y output:\n{text}"));
    let fingerprint = text
        .lines()
        .find_map(|l| l.strip_prefix("Fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in dropbearkey -y output:\n{text}"))
        .to_owned();
    Some(DropbearKey {
        path: path.to_path_buf(),
        public: PublicKey::from_openssh(line).unwrap(),
        fingerprint,
    })
}

/// A login shell that runs busybox's `sh` with only the applets kiln's guest is known to
/// have on PATH.
fn busybox_shell(root: &Path) -> Option<PathBuf> {
    let busybox = find_tool("busybox", &["/bin/busybox", "/usr/bin/busybox"])?;
    let applets = root.join("busybox-bin");
    fs::create_dir(&applets).unwrap();
    for applet in ["sh", "tar", "cat", "mkdir", "chmod", "sleep"] {
        std::os::unix::fs::symlink(&busybox, applets.join(applet)).unwrap();
    }
    let shell = root.join("guest-sh");
    fs::write(
        &shell,
        format!(
            "#!{busybox} sh\nPATH={applets}\nexport PATH\nexec {busybox} sh \"$@\"\n",
            busybox = busybox.display(),
            applets = applets.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&shell, fs::Permissions::from_mode(0o755)).unwrap();
    Some(shell)
}

fn find_tool(name: &str, candidates: &[&str]) -> Option<PathBuf> {
    let on_path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .collect()
        })
        .unwrap_or_default();
    let found = candidates
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.is_file());
    match found {
        Some(path) => Some(path),
        None => unavailable(&format!(
            "`{name}` is not installed (Debian packages: dropbear-bin, busybox, util-linux)"
        )),
    }
}

/// A port that was free a moment ago. Another process could take it before the server
/// binds it; on a test machine that is rare enough.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The server cannot be had: fail in CI, skip (saying why) elsewhere.
#[expect(
    clippy::print_stderr,
    reason = "a skipped test must say why it skipped"
)]
fn unavailable<T>(reason: &str) -> Option<T> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("cannot start the dropbear test server (CI=true, so this fails): {reason}");
    }
    eprintln!("skipping: cannot start the dropbear test server: {reason}");
    None
}
