//! What happens when runs are killed, interrupted, stuck or aborted: real QEMU guests, real
//! signals, and `kiln gc` / `kiln status` afterwards.

mod common;

use std::time::Duration;

use common::{Project, Running, Steps, is_event, processes_mentioning, text, tiny_guest};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const LONG_STEP: &str =
    r#"  { shell = { name = "long", inline = ["echo started", "sleep 300"] } },"#;

/// A project whose first provisioning step runs for minutes, built until that step is running.
fn long_build(guest: &std::path::Path) -> (Project, Running) {
    let project = Project::new(
        guest,
        Steps {
            provision: LONG_STEP,
            ..Steps::default()
        },
    );
    let run = start_long_build(&project);
    (project, run)
}

/// `kill -9` the run; its guest outlives it.
fn kill_9(project: &Project, run: &mut Running) {
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGKILL).unwrap();
    run.child.wait().unwrap();
    assert_eq!(project.qemu_pids().len(), 1, "QEMU outlives a killed kiln");
}

fn start_long_build(project: &Project) -> Running {
    let mut cmd = project.kiln();
    cmd.args(["--json", "build"]);
    let mut run = Running::start(cmd);
    run.wait_for(
        "the long step's first line",
        Duration::from_secs(180),
        |e| is_event(e, "output", Some("provision/1")) && e["line"] == "started",
    );
    run
}

#[test]
fn kill_9_mid_provision_then_gc_removes_everything() {
    let Some(guest) = tiny_guest() else { return };
    let (project, mut run) = long_build(&guest);
    assert_eq!(project.qemu_pids().len(), 1, "one guest is running");

    // kill -9 gives kiln no chance to clean up: the guest is still there.
    kill_9(&project, &mut run);

    let status = project.run(&["status"]);
    let status_out = text(&status.stdout);
    assert!(status.status.success());
    assert!(
        status_out
            .lines()
            .any(|l| l.starts_with("leaked   present  qemu qemu-process kiln-")),
        "{status_out}"
    );

    let dry = project.run(&["gc", "--dry-run"]);
    assert!(dry.status.success());
    assert!(
        text(&dry.stdout).contains("would remove"),
        "{}",
        text(&dry.stdout)
    );
    assert_eq!(project.qemu_pids().len(), 1, "--dry-run changes nothing");

    let gc = project.run(&["gc"]);
    let gc_out = text(&gc.stdout);
    assert!(gc.status.success(), "{gc_out}{}", text(&gc.stderr));
    for kind in ["qemu qemu-process", "qemu disk-overlay", "local dir"] {
        assert!(
            gc_out
                .lines()
                .any(|l| l.starts_with("removed") && l.contains(kind)),
            "{kind}: {gc_out}"
        );
    }
    project.assert_clean();
    assert_eq!(
        text(&project.run(&["status"]).stdout),
        "no live or leaked resources\n"
    );
}

/// Stop the step, clean up and exit with 130 within the issue's bound of 15 s.
fn interrupt_mid_provision(signal: Signal) {
    let Some(guest) = tiny_guest() else { return };
    let (project, mut run) = long_build(&guest);

    kill(Pid::from_raw(run.child.id() as i32), signal).unwrap();
    let status = run.wait_exit(Duration::from_secs(15));
    let stderr = run.stderr();
    let status =
        status.unwrap_or_else(|| panic!("kiln did not exit within 15 s of {signal}: {stderr}"));
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("error: interrupted; cleanup done"),
        "{stderr}"
    );
    project.assert_clean();
}

#[test]
fn sigint_mid_provision_cleans_up_and_exits_130() {
    interrupt_mid_provision(Signal::SIGINT);
}

#[test]
fn sigterm_mid_provision_cleans_up_and_exits_130() {
    interrupt_mid_provision(Signal::SIGTERM);
}

#[test]
fn guest_that_never_answers_ssh_fails_with_console_tail() {
    let Some(guest) = tiny_guest() else { return };
    // No root device, and `tiny.shell`: the guest's initramfs waits in a console shell
    // instead of powering off, so the machine stays up and no SSH server ever starts.
    let project = Project::new(
        &guest,
        Steps {
            image_extra: r#"ssh = { timeout = "25s" }"#,
            // `loglevel=7` undoes `quiet`, so the console has kernel lines to show early.
            append_extra: "root=/dev/nonexistent tiny.shell loglevel=7",
            ..Steps::default()
        },
    );
    let out = project.run(&["build"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    assert!(
        error.starts_with("error: tiny: step connect failed: "),
        "{stderr}"
    );
    assert!(
        error.contains("within 25.0s"),
        "the message names the bound: {error}"
    );
    assert!(
        stderr.contains("  waited for SSH on 127.0.0.1:"),
        "{stderr}"
    );
    assert!(stderr.contains("  last console lines:"), "{stderr}");
    assert!(stderr.contains("  | "), "console lines are shown: {stderr}");
    project.assert_clean();
}

#[test]
fn on_error_abort_keeps_the_machine_until_gc() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: r#"  { shell = { inline = ["false"] } },"#,
            ..Steps::default()
        },
    );
    let out = project.run(&["build", "--on-error=abort"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("  reach it with: ssh -i "), "{stderr}");
    assert!(stderr.contains("  remove it with: kiln -C "), "{stderr}");
    assert_eq!(project.qemu_pids().len(), 1, "the machine is kept");
    let key = stderr
        .split("ssh -i ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the kept key is private");

    // A new build does not reap what was kept on purpose…
    let status = text(&project.run(&["status"]).stdout);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("kept     present  qemu qemu-process")),
        "{status}"
    );

    // …an explicit gc does.
    let gc = project.run(&["gc"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    project.assert_clean();
}

#[test]
fn build_reaps_what_a_killed_run_left_before_it_starts() {
    let Some(guest) = tiny_guest() else { return };
    let (project, mut run) = long_build(&guest);
    kill_9(&project, &mut run);

    // The next build reaps the dead run first. It then fails at launch (no QEMU binary), so
    // the test needs no second guest boot.
    let out = project
        .kiln()
        .arg("build")
        .env("KILN_QEMU", "/nonexistent/qemu-system-x86_64")
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("removed 4 resource(s) left by earlier runs"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "error: tiny: step launch failed: `/nonexistent/qemu-system-x86_64` not found \
             (install QEMU: scripts/setup.sh, or apt-get install qemu-system-x86 qemu-utils)"
        ),
        "{stderr}"
    );
    project.assert_clean();
}

#[test]
fn two_gc_at_once_remove_a_killed_run_once() {
    let Some(guest) = tiny_guest() else { return };
    let (project, mut run) = long_build(&guest);
    kill_9(&project, &mut run);

    let spawn = || {
        project
            .kiln()
            .arg("gc")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let both = format!("{}{}", text(&a.stdout), text(&b.stdout));
    assert!(
        a.status.success() && b.status.success(),
        "{both}{}{}",
        text(&a.stderr),
        text(&b.stderr)
    );
    let removed: Vec<&str> = both.lines().filter(|l| l.starts_with("removed")).collect();
    assert_eq!(
        removed.len(),
        4,
        "each resource removed exactly once: {both}"
    );
    for kind in [
        "qemu qemu-process",
        "qemu disk-overlay",
        "local dir",
        "local port",
    ] {
        assert_eq!(
            removed.iter().filter(|l| l.contains(kind)).count(),
            1,
            "{kind}: {both}"
        );
    }
    project.assert_clean();
}

#[test]
fn a_qemu_wrapper_that_forks_is_reaped_after_kill_9() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: LONG_STEP,
            ..Steps::default()
        },
    );
    // Runs QEMU as its child instead of exec'ing it, as site wrappers often do, and under
    // another name (RHEL calls it qemu-kvm): neither process is named qemu-system-*.
    let qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .unwrap();
    let renamed = project.path().join("qemu-kvm");
    std::os::unix::fs::symlink(&qemu, &renamed).unwrap();
    let wrapper = project.path().join("qemu-wrapper");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n'{}' \"$@\"\necho qemu ended\n",
            renamed.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut cmd = project.kiln();
    cmd.args(["--json", "build"]).env("KILN_QEMU", &wrapper);
    let mut run = Running::start(cmd);
    run.wait_for(
        "the long step's first line",
        Duration::from_secs(180),
        |e| is_event(e, "output", Some("provision/1")) && e["line"] == "started",
    );
    let run_id = run
        .seen
        .iter()
        .find(|e| is_event(e, "run_started", None))
        .and_then(|e| e["run_id"].as_str())
        .unwrap()
        .to_string();
    let marker = format!("kiln-{run_id}-tiny");
    assert_eq!(
        processes_mentioning(&marker).len(),
        2,
        "the wrapper and its QEMU: {:?}",
        processes_mentioning(&marker)
    );
    kill(Pid::from_raw(run.child.id() as i32), Signal::SIGKILL).unwrap();
    run.child.wait().unwrap();

    let gc = project
        .kiln()
        .arg("gc")
        .env("KILN_QEMU", &wrapper)
        .output()
        .unwrap();
    assert!(
        gc.status.success(),
        "{}{}",
        text(&gc.stdout),
        text(&gc.stderr)
    );
    assert_eq!(
        processes_mentioning(&marker),
        Vec::new(),
        "nothing carrying the marker"
    );
    project.assert_clean();
}

#[test]
fn a_journal_that_cannot_be_written_mid_build_exits_70() {
    let Some(guest) = tiny_guest() else { return };
    let project = Project::new(
        &guest,
        Steps {
            provision: r#"  { shell = { name = "short", inline = ["echo started", "sleep 2"] } },"#,
            ..Steps::default()
        },
    );
    let mut cmd = project.kiln();
    cmd.args(["--json", "build"]);
    let mut run = Running::start(cmd);
    run.wait_for("the step's first line", Duration::from_secs(180), |e| {
        is_event(e, "output", Some("provision/1")) && e["line"] == "started"
    });
    // An immutable file refuses writes even to root: the next journal record fails.
    let journal_dir = project.path().join(".kiln/journal");
    let journal = std::fs::read_dir(&journal_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let chattr = |flag: &str| {
        let st = std::process::Command::new("chattr")
            .arg(flag)
            .arg(&journal)
            .status()
            .unwrap();
        assert!(st.success(), "chattr {flag}");
    };
    chattr("+i");
    let status = run.wait_exit(Duration::from_secs(120));
    chattr("-i");
    let stderr = run.stderr();
    assert_eq!(status.and_then(|s| s.code()), Some(70), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or("");
    assert!(
        error.starts_with("error: tiny: step shutdown failed: record a resource in the journal: access the state directory"),
        "{stderr}"
    );
    // What the run could not record as removed, gc reaps (already gone = success).
    let gc = project.run(&["gc"]);
    assert!(
        gc.status.success(),
        "{}{}",
        text(&gc.stdout),
        text(&gc.stderr)
    );
    project.assert_clean();
}

#[test]
fn gc_interrupted_finishes_its_removal_and_the_next_gc_does_the_rest() {
    let Some(guest) = tiny_guest() else { return };
    let (project, mut run) = long_build(&guest);
    kill_9(&project, &mut run);

    let first = project
        .kiln()
        .arg("gc")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Soon after it starts, while it is stopping QEMU (the first, slowest removal).
    std::thread::sleep(Duration::from_millis(150));
    kill(Pid::from_raw(first.id() as i32), Signal::SIGINT).unwrap();
    let first = first.wait_with_output().unwrap();
    let (out1, err1) = (text(&first.stdout), text(&first.stderr));
    match first.status.code() {
        Some(130) => assert!(
            err1.contains("error: interrupted; the removal in progress was finished and recorded"),
            "{err1}"
        ),
        Some(0) => {}
        other => panic!("gc exited {other:?}: {out1}{err1}"),
    }
    let second = project.run(&["gc"]);
    let out2 = text(&second.stdout);
    assert!(second.status.success(), "{out2}{}", text(&second.stderr));
    let both = format!("{out1}{out2}");
    let removed: Vec<&str> = both.lines().filter(|l| l.starts_with("removed")).collect();
    assert_eq!(
        removed.len(),
        4,
        "each resource removed exactly once: {both}"
    );
    project.assert_clean();
}
