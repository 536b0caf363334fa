//! A bake of a real cloud-init image (scripts/cloud-guest.sh: Debian 12 genericcloud-like, GRUB
//! disk boot, cloud-init 22.4) with real QEMU: kiln seeds it over NoCloud, logs in as the
//! distribution's default user and provisions through sudo. The result is read offline and
//! booted again with a new key. Slow (two boots of ~1.5 min each under TCG), so it is one test.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{KILN, cloud_guest, debugfs, is_event, qemu_pids_mentioning, text};

/// A kiln project in a temp dir whose one image boots `disk` (no kernel: GRUB from the disk).
struct CloudProject {
    dir: tempfile::TempDir,
}

impl CloudProject {
    fn new(disk: &Path, provision: &str, test: &str) -> CloudProject {
        let dir = tempfile::Builder::new()
            .prefix("kiln-cloud-")
            .tempdir()
            .unwrap();
        let toml = format!(
            r#"[project]
name = "cloud-test"

[[image]]
name = "cloud"
source = {{ qemu = {{ disk = "{disk}", memory = 1024, cpus = 2 }} }}
ssh = {{ user = "debian", timeout = "6m" }}
provision = [
{provision}
]
test = [
{test}
]
"#,
            disk = disk.display(),
        );
        std::fs::write(dir.path().join("kiln.toml"), toml).unwrap();
        CloudProject { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn build(&self) -> (Output, Vec<serde_json::Value>) {
        let out = Command::new(KILN)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env_remove("KILN_LOG")
            .stdin(Stdio::null())
            .args(["--json", "build"])
            .output()
            .unwrap();
        let events = text(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (out, events)
    }

    fn image(&self) -> PathBuf {
        self.path().join("output/cloud/cloud.qcow2")
    }

    fn assert_clean(&self) {
        assert_eq!(
            qemu_pids_mentioning(&self.path().display().to_string()),
            Vec::<u32>::new(),
            "QEMU processes left behind"
        );
        for sub in ["journal", "tmp"] {
            let left: Vec<PathBuf> = std::fs::read_dir(self.path().join(".kiln").join(sub))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert_eq!(left, Vec::<PathBuf>::new(), "state left in .kiln/{sub}");
        }
    }
}

fn assert_succeeded(what: &str, out: &Output, events: &[serde_json::Value]) {
    let last = events.last().map(|e| e["status"].clone());
    assert!(
        out.status.success() && last == Some("succeeded".into()),
        "{what} failed ({}): {}\nevents: {events:#?}",
        out.status,
        text(&out.stderr)
    );
}

/// How long a step took, for the note printed at the end.
fn step_seconds(events: &[serde_json::Value], step: &str) -> f64 {
    events
        .iter()
        .find(|e| is_event(e, "step_finished", Some(step)))
        .and_then(|e| e["duration_s"].as_f64())
        .unwrap_or(f64::NAN)
}

/// Where partition 1 (the root filesystem) starts on the cloud guest's disk.
const PARTITION_OFFSET: u64 = 1 << 20;

/// Read a file from partition 1 of a disk image, without mounting anything.
fn read_from_disk(image: &Path, guest_path: &str) -> String {
    debugfs(image, &format!("cat {guest_path}"), PARTITION_OFFSET)
}

/// The names in a directory of partition 1, without mounting anything.
fn list_on_disk(image: &Path, dir: &str) -> Vec<String> {
    debugfs(image, &format!("ls -p {dir}"), PARTITION_OFFSET)
        .lines()
        // `/inode/mode/uid/gid/name/size/`
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

#[test]
fn bake_a_cloud_init_image_as_its_default_user_and_boot_the_result() {
    let Some(guest) = cloud_guest() else { return };

    // 1. Bake: upload as `debian`, then move the file into place and write /etc through sudo.
    let first = CloudProject::new(
        &guest.join("base.qcow2"),
        r#"  { file = { from = "files/greeting.txt", to = "/home/debian/" } },
  { shell = { name = "install", sudo = true, inline = [
      "install -D -m 644 /home/debian/greeting.txt /opt/kiln/greeting.txt",
      "echo baked-by-kiln > /etc/kiln-marker",
  ] } },"#,
        r#"  { shell = { name = "check", inline = [
      "grep -qx 'hello from the host' /opt/kiln/greeting.txt",
      "grep -qx baked-by-kiln /etc/kiln-marker",
      "test \"$(stat -c %U /etc/kiln-marker)\" = root",
      "test \"$(id -un)\" = debian",
      "cloud-init status --wait",
  ] } },"#,
    );
    let files = first.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("greeting.txt"), "hello from the host\n").unwrap();

    let (out, events) = first.build();
    assert_succeeded("the bake", &out, &events);
    let started: Vec<&str> = events
        .iter()
        .filter(|e| is_event(e, "step_started", None))
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert_eq!(
        started,
        [
            "prepare",
            "launch",
            "connect",
            "provision/1",
            "provision/2",
            "test/1",
            "generalize",
            "shutdown",
            "capture",
            "manifest"
        ]
    );
    // Reached with the default `ssh.host_key = "pinned"`: cloud-init installed kiln's host key.
    let generalized: Vec<&str> = events
        .iter()
        .filter(|e| is_event(e, "output", Some("generalize")))
        .filter_map(|e| e["line"].as_str())
        .collect();
    assert!(
        generalized.contains(&"removed the build key from /home/debian/.ssh/authorized_keys")
            && generalized.contains(&"cleaned cloud-init state, logs and machine-id")
            && generalized.contains(&"removed host key /etc/ssh/ssh_host_ed25519_key"),
        "{generalized:?}"
    );
    let output = events
        .iter()
        .filter(|e| is_event(e, "output", Some("test/1")))
        .filter_map(|e| e["line"].as_str())
        .collect::<Vec<_>>();
    assert!(
        output.iter().any(|l| l.trim() == "status: done"),
        "cloud-init did not finish cleanly: {output:?}"
    );

    let image = first.image();
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(first.path().join("output/cloud/kiln-manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["image"], "cloud");
    assert_eq!(manifest["output"]["format"], "qcow2");
    assert_eq!(
        manifest["output"]["sha256"],
        kiln::digest::sha256_file(&image).unwrap()
    );
    assert_eq!(
        manifest["source"][0]["sha256"],
        kiln::digest::sha256_file(&guest.join("base.qcow2")).unwrap()
    );
    first.assert_clean();

    // 2. The image holds what was provisioned (read offline from its ext4 partition).
    assert_eq!(
        read_from_disk(&image, "/opt/kiln/greeting.txt"),
        "hello from the host\n"
    );
    assert_eq!(
        read_from_disk(&image, "/etc/kiln-marker"),
        "baked-by-kiln\n"
    );

    // 3. Generalized: no build key, no host key, no cloud-init instance, no machine-id.
    let keys = read_from_disk(&image, "/home/debian/.ssh/authorized_keys");
    assert!(!keys.contains("kiln"), "the build key is gone: {keys}");
    let ssh = list_on_disk(&image, "/etc/ssh");
    assert!(
        ssh.contains(&"sshd_config".to_string()),
        "listed /etc/ssh: {ssh:?}"
    );
    assert!(
        !ssh.iter().any(|n| n.starts_with("ssh_host_")),
        "no host key in the image: {ssh:?}"
    );
    let cloud = list_on_disk(&image, "/var/lib/cloud");
    assert!(
        !cloud.iter().any(|n| n == "instance" || n == "instances"),
        "no cloud-init instance state: {cloud:?}"
    );
    let machine_id = read_from_disk(&image, "/etc/machine-id");
    assert!(
        machine_id.trim().is_empty() || machine_id.trim() == "uninitialized",
        "machine-id reset: {machine_id:?}"
    );

    // 4. It boots again: a new instance, so cloud-init installs this build's (new) key.
    let second = CloudProject::new(
        &image,
        "",
        r#"  { shell = { name = "still there", inline = [
      "grep -qx 'hello from the host' /opt/kiln/greeting.txt",
      "grep -qx baked-by-kiln /etc/kiln-marker",
      "test \"$(id -un)\" = debian",
  ] } },"#,
    );
    let (out2, events2) = second.build();
    assert_succeeded("the bake of the baked image", &out2, &events2);
    assert!(second.image().exists());
    second.assert_clean();

    #[expect(clippy::print_stderr, reason = "boot times help read a slow CI run")]
    {
        eprintln!(
            "cloud image: boot to SSH {:.1} s, then {:.1} s (baked image); shutdown {:.1} s",
            step_seconds(&events, "connect"),
            step_seconds(&events2, "connect"),
            step_seconds(&events, "shutdown"),
        );
    }
}
