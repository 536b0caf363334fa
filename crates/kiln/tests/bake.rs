//! End-to-end bakes of the tiny guest with real QEMU: the result is proven by reading its
//! filesystem and by booting it again.

mod common;

use common::{Project, Steps, debugfs, is_event, read_from_image, text, tiny_guest};

fn sha256(path: &std::path::Path) -> String {
    kiln::digest::sha256_file(path).unwrap()
}

#[test]
fn bake_provision_test_collect_and_boot_the_result() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: r#"
  { file = { from = "files/motd", to = "/etc/motd" } },
  { file = { from = "files/app", to = "/etc/" } },
  { shell = { name = "marker", env = { GREETING = "hi there" }, workdir = "/etc", inline = [
      "echo \"$GREETING\" > kiln-marker",
      "printf 'port = 8080\n' > /etc/app/service.conf",
      "echo to-stderr >&2",
  ] } },
  { shell = { script = "setup.sh" } },
  { collect = { from = "/etc/app", to = "collected" } },
  { shell = { name = "secret env", env = { TOKEN = "topsecret-4711" }, inline = [
      "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done > /etc/cmdlines-during-step",
      "test \"$TOKEN\" = topsecret-4711",
      "echo 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKeyThatMustStay user@laptop' >> /root/.ssh/authorized_keys",
  ] } },
"#,
            test: r#"  { shell = { inline = ["grep -qx 'hi there' /etc/kiln-marker", "test -f /etc/from-script"] } },"#,
            ..Steps::default()
        },
    );
    project.write("files/motd", "welcome\n");
    project.write("files/app/app.conf", "name = app\n");
    project.write("files/app/nested/deep.txt", "deep\n");
    project.write(
        "setup.sh",
        "#!/bin/sh\nset -e\necho from-script > /etc/from-script\n",
    );

    let out = project.run(&["--json", "build"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "build failed: {}\n{stdout}",
        text(&out.stderr)
    );

    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let started: Vec<&str> = events
        .iter()
        .filter(|e| is_event(e, "step_started", None))
        .map(|e| e["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        started,
        [
            "prepare",
            "launch",
            "connect",
            "provision/1",
            "provision/2",
            "provision/3",
            "provision/4",
            "provision/5",
            "provision/6",
            "test/1",
            "generalize",
            "shutdown",
            "capture",
            "manifest"
        ]
    );
    let out_lines: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| is_event(e, "output", Some("provision/3")))
        .map(|e| (e["stream"].as_str().unwrap(), e["line"].as_str().unwrap()))
        .collect();
    assert_eq!(out_lines, [("stderr", "to-stderr")]);
    assert!(
        events
            .iter()
            .any(|e| is_event(e, "resource_created", None) && e["kind"] == "qemu-process")
    );
    let last = events.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["status"], "succeeded");

    // The manifest describes what was written.
    let out_dir = project.path().join("output/tiny");
    let image = out_dir.join("tiny.qcow2");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("kiln-manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["schema"], 1);
    assert_eq!(manifest["image"], "tiny");
    assert_eq!(manifest["provider"], "qemu");
    assert_eq!(manifest["output"]["format"], "qcow2");
    assert_eq!(
        manifest["output"]["path"], "output/tiny/tiny.qcow2",
        "paths inside the project are relative"
    );
    assert_eq!(manifest["output"]["sha256"], sha256(&image));
    assert_eq!(
        manifest["output"]["size"],
        std::fs::metadata(&image).unwrap().len()
    );
    assert_eq!(
        manifest["source"][0]["sha256"],
        sha256(&guest.join("base.qcow2"))
    );
    assert!(["kvm", "tcg"].contains(&manifest["machine"]["accelerator"].as_str().unwrap()));
    assert_eq!(
        manifest["steps"].as_array().unwrap().len(),
        13,
        "every step before the manifest"
    );
    let artifact = events
        .iter()
        .find(|e| is_event(e, "artifact_written", None))
        .unwrap();
    assert_eq!(artifact["sha256"], manifest["output"]["sha256"]);

    // collect brought the directory back, nested files included.
    assert_eq!(
        std::fs::read_to_string(project.path().join("collected/app/app.conf")).unwrap(),
        "name = app\n"
    );
    assert_eq!(
        std::fs::read_to_string(project.path().join("collected/app/nested/deep.txt")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(project.path().join("collected/app/service.conf")).unwrap(),
        "port = 8080\n"
    );

    // Nothing left running or journaled; the base image was not written.
    project.assert_clean();

    // The image's filesystem holds what provisioning wrote.
    assert_eq!(read_from_image(&image, "/etc/kiln-marker"), "hi there\n");
    assert_eq!(read_from_image(&image, "/etc/motd"), "welcome\n");

    // A step's env values were never on a command line in the guest, nor in what kiln wrote.
    let cmdlines = read_from_image(&image, "/etc/cmdlines-during-step");
    assert!(cmdlines.contains("sh -c eval \"$(cat)\""), "{cmdlines}");
    assert!(!cmdlines.contains("topsecret"), "{cmdlines}");
    let manifest_text = std::fs::read_to_string(out_dir.join("kiln-manifest.json")).unwrap();
    assert!(!manifest_text.contains("topsecret") && !stdout.contains("topsecret"));

    // Generalized: the build key is gone and the user's key stays; no host key, seed copy or
    // kiln temporary file is left in the image.
    let keys = read_from_image(&image, "/root/.ssh/authorized_keys");
    assert_eq!(
        keys,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKeyThatMustStay user@laptop\n"
    );
    let listing = |dir: &str| {
        let listing = debugfs(&image, &format!("ls -p {dir}"), 0);
        assert!(listing.contains("/./"), "debugfs listed {dir}: {listing}");
        listing
    };
    let dropbear = listing("/etc/dropbear");
    assert!(!dropbear.contains("host_key"), "{dropbear}");
    let tmp = listing("/tmp");
    assert!(!tmp.contains("kiln-"), "{tmp}");
    let run = listing("/run");
    assert!(!run.contains("nocloud"), "{run}");

    // And it boots: bake it again with a test that checks the files, writing raw this time.
    let again = Project::new(
        &guest,
        Steps {
            test: r#"  { shell = { inline = ["grep -qx 'hi there' /etc/kiln-marker", "grep -q 'port = 8080' /etc/app/service.conf", "test -f /etc/app/nested/deep.txt"] } },"#,
            ..Steps::default()
        },
    );
    let toml = std::fs::read_to_string(again.path().join("kiln.toml"))
        .unwrap()
        .replace("{{ guest }}/base.qcow2", &image.display().to_string())
        + "output = { format = \"raw\" }\n";
    std::fs::write(again.path().join("kiln.toml"), toml).unwrap();
    let out = again.run(&["build"]);
    assert!(out.status.success(), "rebake failed: {}", text(&out.stderr));
    let raw = again.path().join("output/tiny/tiny.raw");
    assert!(raw.exists());
    assert_eq!(read_from_image(&raw, "/etc/from-script"), "from-script\n");
    again.assert_clean();
}

#[test]
fn failing_provision_step_names_step_and_command_and_leaves_nothing() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: r#"  { shell = { name = "will fail", inline = ["echo before", "exit 7", "echo after"] } },"#,
            ..Steps::default()
        },
    );
    let out = project.run(&["build"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        error,
        [
            "error: tiny: step provision/1 failed: shell `will fail`: command `exit 7` exited with status 7"
        ]
    );
    assert!(stderr.contains("provision/1 | before"), "{stderr}");
    assert!(!stderr.contains("| after"), "{stderr}");
    assert!(!project.path().join("output/tiny/tiny.qcow2").exists());
    let leftovers: Vec<_> = std::fs::read_dir(project.path().join("output/tiny"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(
        leftovers,
        Vec::<std::path::PathBuf>::new(),
        "no partial output"
    );
    project.assert_clean();
}

#[test]
fn failing_test_step_means_no_image() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: r#"  { shell = { inline = ["echo ok > /etc/ok"] } },"#,
            test: r#"  { shell = { name = "check", inline = ["test -f /etc/missing"] } },"#,
            ..Steps::default()
        },
    );
    let out = project.run(&["build"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: tiny: step test/1 failed: shell `check`: command `test -f /etc/missing` exited with status 1"),
        "{stderr}"
    );
    assert!(!project.path().join("output/tiny").exists());
    project.assert_clean();
}

/// A project baking `image` (an earlier bake's output) instead of the tiny guest's base disk.
fn project_from(guest: &std::path::Path, image: &std::path::Path, steps: Steps<'_>) -> Project {
    let project = Project::new(guest, steps);
    let toml = std::fs::read_to_string(project.path().join("kiln.toml"))
        .unwrap()
        .replace("{{ guest }}/base.qcow2", &image.display().to_string());
    std::fs::write(project.path().join("kiln.toml"), toml).unwrap();
    project
}

#[test]
fn a_guest_that_ignores_the_pinned_host_key_is_refused_unless_accept_new() {
    let Some(guest) = tiny_guest() else { return };
    // An image whose SSH server always presents a key of its own, whatever cloud-init says.
    let ignoring = Project::new(
        &guest,
        Steps {
            provision: r#"  { shell = { name = "own host key", inline = [
      "dropbearkey -t ed25519 -f /etc/own-host-key >/dev/null",
      "printf '::sysinit:/etc/init.d/rcS\n::respawn:/usr/sbin/dropbear -F -E -r /etc/own-host-key -s -p 22\n::shutdown:/bin/sync\n' > /etc/inittab",
  ] } },"#,
            ..Steps::default()
        },
    );
    let out = ignoring.run(&["build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let image = ignoring.path().join("output/tiny/tiny.qcow2");

    let pinned = project_from(
        &guest,
        &image,
        Steps {
            image_extra: r#"ssh = { timeout = "10m" }"#,
            ..Steps::default()
        },
    );
    let started = std::time::Instant::now();
    let out = pinned.run(&["build"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    let (presented, expected) = error
        .split_once("it presented ")
        .and_then(|(_, rest)| rest.split_once(" (ssh-ed25519), not the pinned "))
        .map(|(p, rest)| (p.to_string(), rest.split(' ').next().unwrap().to_string()))
        .unwrap_or_else(|| panic!("both fingerprints named: {error}"));
    assert!(presented.starts_with("SHA256:") && expected.starts_with("SHA256:"));
    assert_ne!(presented, expected);
    assert!(
        error.starts_with(
            "error: tiny: step connect failed: verify the host key of root@127.0.0.1:"
        ),
        "{error}"
    );
    assert!(error.contains("ssh.host_key = \"accept-new\""), "{error}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(300),
        "refused at first contact, not after the 10 min SSH timeout"
    );
    pinned.assert_clean();

    // The same image with accept-new: the guest's own key is taken on first contact.
    let accepting = project_from(
        &guest,
        &image,
        Steps {
            image_extra: r#"ssh = { timeout = "2m", host_key = "accept-new" }"#,
            test: r#"  { shell = { inline = ["test -f /etc/own-host-key"] } },"#,
            ..Steps::default()
        },
    );
    let out = accepting.run(&["build"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    accepting.assert_clean();
}
