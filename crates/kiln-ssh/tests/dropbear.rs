//! kiln-ssh against a real dropbear server on 127.0.0.1 (see `support` for how it is run).
//!
//! Every connect pins the server's real host key unless the test says otherwise.
//!
//! Transfer tests run twice: with the host's userland (GNU tar), standing in for cloud
//! images, and with busybox only, standing in for kiln's small guest.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_ssh::{
    ConnectOptions, HostKeyPolicy, KeyPair, OutputStream, Session, SshError, TransferDirection,
};
use support::{Flavour, Peer};

/// Output collected from one exec, in arrival order.
#[derive(Debug, Default)]
struct Collected {
    chunks: Vec<(OutputStream, Vec<u8>, Instant)>,
}

impl Collected {
    fn text(&self, stream: OutputStream) -> String {
        let bytes: Vec<u8> = self
            .chunks
            .iter()
            .filter(|(s, _, _)| *s == stream)
            .flat_map(|(_, d, _)| d.iter().copied())
            .collect();
        String::from_utf8(bytes).unwrap()
    }
}

async fn run(session: &Session, command: &str, stdin: Option<&[u8]>) -> (u32, Collected) {
    let mut collected = Collected::default();
    let status = session
        .exec(command, stdin, &mut |stream, data| {
            collected
                .chunks
                .push((stream, data.to_vec(), Instant::now()));
        })
        .await
        .unwrap_or_else(|e| panic!("exec {command:?}: {e:?}"));
    (status, collected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retries_until_the_server_appears() {
    let key = KeyPair::generate().unwrap();
    let Some(mut peer) = Peer::prepare(Flavour::Host) else {
        return;
    };
    peer.authorize(&key);
    let target = peer.target();
    let pinned = HostKeyPolicy::Pinned(peer.host_key.public.clone());
    let started = Instant::now();
    let connecting = tokio::spawn({
        let key = key.clone();
        async move {
            let opts = ConnectOptions {
                timeout: Duration::from_secs(20),
                retry_interval: Duration::from_millis(100),
                ..ConnectOptions::new(pinned)
            };
            kiln_ssh::connect(&target, &key, &opts).await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !connecting.is_finished(),
        "connected before the server existed"
    );
    tokio::task::block_in_place(|| peer.start()).expect("dropbear starts");

    let session = connecting.await.unwrap().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(1500));
    let (status, out) = run(&session, "echo up", None).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "up\n")
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn connect_retries_until_the_key_is_authorized() {
    let key = KeyPair::generate().unwrap();
    let Some(mut peer) = Peer::prepare(Flavour::Host) else {
        return;
    };
    peer.start().expect("dropbear starts");
    let target = peer.target();
    let pinned = HostKeyPolicy::Pinned(peer.host_key.public.clone());
    let connecting = tokio::spawn({
        let key = key.clone();
        async move {
            let opts = ConnectOptions {
                timeout: Duration::from_secs(20),
                retry_interval: Duration::from_millis(100),
                ..ConnectOptions::new(pinned)
            };
            kiln_ssh::connect(&target, &key, &opts).await
        }
    });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        !connecting.is_finished(),
        "authenticated before the key was installed"
    );
    peer.authorize(&key);
    let session = connecting.await.unwrap().unwrap();
    session.close().await.unwrap();
}

/// Connect as `kiln` to a local port with a fresh key, expecting failure within `timeout`.
/// A host key is pinned, to show that only a wrong host key makes a failure final.
async fn connect_error(port: u16, timeout: Duration) -> SshError {
    let key = KeyPair::generate().unwrap();
    let target = kiln_ssh::Target {
        host: "127.0.0.1".to_owned(),
        port,
        user: "kiln".to_owned(),
    };
    let opts = ConnectOptions {
        timeout,
        retry_interval: Duration::from_millis(100),
        ..ConnectOptions::new(HostKeyPolicy::pinned(
            &KeyPair::generate_host_key().unwrap(),
        ))
    };
    kiln_ssh::connect(&target, &key, &opts).await.unwrap_err()
}

#[tokio::test]
async fn connect_times_out_with_the_last_error_when_nothing_listens() {
    let port = support::free_port();
    let err = connect_error(port, Duration::from_secs(1)).await;
    match &err {
        SshError::Timeout {
            target: t,
            waited,
            last_error,
        } => {
            assert_eq!(t, &format!("kiln@127.0.0.1:{port}"));
            assert!(*waited >= Duration::from_secs(1), "{waited:?}");
            assert_eq!(last_error, "tcp connect: Connection refused (os error 111)");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("connect to kiln@127.0.0.1:{port} within 1.")),
        "{text}"
    );
    assert!(
        text.ends_with("s; last error: tcp connect: Connection refused (os error 111)"),
        "{text}"
    );
}

/// QEMU's port forward accepts a connection long before the guest answers it: a connection
/// that stays silent is dropped and retried instead of holding the whole attempt.
#[tokio::test]
async fn connect_reconnects_when_no_banner_comes() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream); // accepted, never answered
        }
    });
    let err = connect_error(port, Duration::from_secs(5)).await;
    match &err {
        SshError::Timeout { last_error, .. } => assert_eq!(last_error, "no ssh banner within 2s"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "a silent connection is given up and a new one made"
    );
}

#[tokio::test]
async fn connect_pinned_to_the_servers_host_key_reports_its_fingerprint() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    assert_eq!(session.host_key_fingerprint(), peer.host_key.fingerprint);
    assert_eq!(session.host_key(), &peer.host_key.public);
    assert_eq!(session.host_key().algorithm(), "ssh-ed25519");
    let (status, _) = run(&session, "true", None).await;
    assert_eq!(status, 0);
    session.close().await.unwrap();
}

/// The time within which a connect that must not retry has to fail; far below the connect
/// timeout of the tests that use it, far above a handshake on a loaded machine.
const FAILS_AT_ONCE: Duration = Duration::from_secs(30);

/// Connects with `host_key` and a timeout that only a retrying connect would reach.
async fn connect_expecting_a_fatal_error(
    peer: &Peer,
    key: &KeyPair,
    host_key: HostKeyPolicy,
) -> SshError {
    let opts = ConnectOptions {
        timeout: Duration::from_secs(60),
        retry_interval: Duration::from_millis(100),
        ..ConnectOptions::new(host_key)
    };
    let started = Instant::now();
    let err = kiln_ssh::connect(&peer.target(), key, &opts)
        .await
        .expect_err("connected despite the host key policy");
    assert!(
        started.elapsed() < FAILS_AT_ONCE,
        "took {:?}, so it was retried: {err}",
        started.elapsed()
    );
    err
}

#[tokio::test]
async fn connect_fails_at_once_when_the_host_key_is_not_the_pinned_one() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let pinned = KeyPair::generate_host_key().unwrap();
    let err = connect_expecting_a_fatal_error(&peer, &key, HostKeyPolicy::pinned(&pinned)).await;
    let target = peer.target().to_string();
    match &err {
        SshError::HostKeyMismatch {
            target: t,
            expected,
            expected_algorithm,
            presented,
            presented_algorithm,
        } => {
            assert_eq!(t, &target);
            assert_eq!(expected, &pinned.fingerprint());
            assert_eq!(expected_algorithm, "ssh-ed25519");
            assert_eq!(presented, &peer.host_key.fingerprint);
            assert_eq!(presented_algorithm, "ssh-ed25519");
        }
        other => panic!("expected a host key mismatch, got {other:?}"),
    }
    assert_eq!(
        err.to_string(),
        format!(
            "verify the host key of {target}: it presented {} (ssh-ed25519), not the pinned \
             {} (ssh-ed25519); either the guest ignored the host key kiln gave it or another \
             machine answered (for an image that ignores it, set ssh.host_key = \"accept-new\")",
            peer.host_key.fingerprint,
            pinned.fingerprint()
        )
    );
    // The client gave up before authenticating: the wrong server never saw the client key.
    let log = peer.log();
    assert!(!log.contains("auth succeeded"), "{log}");
}

#[tokio::test]
async fn connect_accepting_a_new_host_key_records_it() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let session = peer.connect_with(&key, HostKeyPolicy::AcceptNew).await;
    assert_eq!(session.host_key_fingerprint(), peer.host_key.fingerprint);
    assert_eq!(session.host_key(), &peer.host_key.public);
    session.close().await.unwrap();
}

/// A guest with several host keys (its own and the one kiln gave it) presents the pinned
/// one, because the client asks only for that type.
#[tokio::test]
async fn pinning_makes_a_server_with_several_host_keys_present_the_pinned_one() {
    let key = KeyPair::generate().unwrap();
    let Some(mut peer) = Peer::prepare(Flavour::Host) else {
        return;
    };
    let ecdsa = peer.add_host_key("ecdsa");
    peer.authorize(&key);
    peer.start().expect("dropbear starts");

    let session = peer
        .connect_with(&key, HostKeyPolicy::Pinned(ecdsa.public.clone()))
        .await;
    assert_eq!(session.host_key_fingerprint(), ecdsa.fingerprint);
    assert_eq!(session.host_key().algorithm(), "ecdsa-sha2-nistp256");
    session.close().await.unwrap();

    // Unrestricted, the client prefers ed25519: the restriction is what chose the key above.
    let session = peer.connect_with(&key, HostKeyPolicy::AcceptNew).await;
    assert_eq!(session.host_key_fingerprint(), peer.host_key.fingerprint);
    session.close().await.unwrap();
    let session = peer.connect(&key).await;
    assert_eq!(session.host_key_fingerprint(), peer.host_key.fingerprint);
    session.close().await.unwrap();
}

#[tokio::test]
async fn connect_fails_at_once_when_the_server_has_no_host_key_of_the_pinned_type() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let ecdsa = peer.make_host_key("ecdsa", "unused_ecdsa_key");
    let err =
        connect_expecting_a_fatal_error(&peer, &key, HostKeyPolicy::Pinned(ecdsa.public.clone()))
            .await;
    let target = peer.target().to_string();
    let offered = match &err {
        SshError::HostKeyAlgorithmUnavailable {
            target: t,
            expected,
            expected_algorithm,
            offered,
        } => {
            assert_eq!(t, &target);
            assert_eq!(expected, &ecdsa.fingerprint);
            assert_eq!(expected_algorithm, "ecdsa-sha2-nistp256");
            // Not the exact list: dropbear 2022.83 also offers RSA when it has no RSA key.
            assert!(offered.iter().any(|a| a == "ssh-ed25519"), "{offered:?}");
            assert!(
                !offered.iter().any(|a| a.starts_with("ecdsa-")),
                "{offered:?}"
            );
            offered.join(", ")
        }
        other => panic!("expected a missing host key algorithm, got {other:?}"),
    };
    assert_eq!(
        err.to_string(),
        format!(
            "verify the host key of {target}: it offers no ecdsa-sha2-nistp256 host key (only \
             {offered}), so it cannot present the pinned {}; either the guest ignored the host \
             key kiln gave it or another machine answered (for an image that ignores it, set \
             ssh.host_key = \"accept-new\")",
            ecdsa.fingerprint
        )
    );
}

#[tokio::test]
async fn exec_reports_exit_statuses_and_signals() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    // One connection serves many commands, one after another.
    for (command, expected) in [
        ("true", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        ("no-such-command-kiln 2>/dev/null", 127),
        ("kill -TERM $$", 128 + 15),
        ("kill -KILL $$", 128 + 9),
    ] {
        let (status, _) = run(&session, command, None).await;
        assert_eq!(status, expected, "{command}");
    }
    session.close().await.unwrap();
}

#[tokio::test]
async fn exec_streams_stdout_and_stderr_as_they_arrive() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let (status, out) = run(
        &session,
        "echo one; sleep 1; echo two >&2; echo three",
        None,
    )
    .await;
    let finished = Instant::now();
    assert_eq!(status, 0);
    assert_eq!(out.text(OutputStream::Stdout), "one\nthree\n");
    assert_eq!(out.text(OutputStream::Stderr), "two\n");
    let (first_stream, first_data, first_at) = &out.chunks[0];
    assert_eq!(
        (*first_stream, first_data.as_slice()),
        (OutputStream::Stdout, &b"one\n"[..])
    );
    // "one" was handed over while the command was still sleeping, not at the end.
    assert!(
        finished.duration_since(*first_at) >= Duration::from_millis(700),
        "{:?}",
        finished.duration_since(*first_at)
    );
}

#[tokio::test]
async fn exec_sends_stdin_then_eof() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Busybox, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let (status, out) = run(&session, "cat", Some(b"hello\n")).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "hello\n")
    );

    // Larger than every window on the way, in both directions at once: input must keep
    // flowing while output is read, or this deadlocks.
    let big = pseudo_random(3 * 1024 * 1024 + 17);
    let (status, out) = run(&session, "cat", Some(&big)).await;
    assert_eq!(status, 0);
    let echoed: Vec<u8> = out.chunks.iter().flat_map(|(_, d, _)| d.clone()).collect();
    assert!(
        echoed == big,
        "echoed {} of {} bytes",
        echoed.len(),
        big.len()
    );

    // No stdin means an immediate EOF, not a hang.
    let (status, out) = run(&session, "cat", None).await;
    assert_eq!((status, out.text(OutputStream::Stdout).as_str()), (0, ""));
    session.close().await.unwrap();
}

#[tokio::test]
async fn dropping_an_exec_midway_leaves_the_session_usable() {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(Flavour::Host, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let dropped = tokio::time::timeout(Duration::from_millis(500), {
        let seen = Arc::clone(&seen);
        let session = &session;
        async move {
            let mut on_output = |_: OutputStream, data: &[u8]| {
                seen.lock().unwrap().extend_from_slice(data);
            };
            session
                .exec("echo started; sleep 30", None, &mut on_output)
                .await
        }
    })
    .await;
    assert!(
        dropped.is_err(),
        "the command should still have been running"
    );
    assert_eq!(seen.lock().unwrap().as_slice(), b"started\n");

    // A wedged session would hang here (nextest's timeout ends it); no clock is asserted.
    let (status, out) = run(&session, "echo still here", None).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "still here\n")
    );

    // The abandoned command ending later, while another runs, disturbs neither.
    let dropped =
        tokio::time::timeout(Duration::from_millis(300), run(&session, "sleep 1", None)).await;
    assert!(dropped.is_err());
    let (status, out) = run(&session, "sleep 2; echo late", None).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "late\n")
    );
    session.close().await.unwrap();
}

async fn upload_and_download_a_file(flavour: Flavour) {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(flavour, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let local = tempfile::tempdir().unwrap();
    let script = local.path().join("tool.sh");
    fs::write(&script, "#!/bin/sh\necho tool ran\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o750)).unwrap();

    // Into a directory (trailing slash), creating parents, with awkward characters.
    session.upload(&script, "bin dir/it's/").await.unwrap();
    let remote = peer.home.join("bin dir/it's/tool.sh");
    assert_eq!(fs::read(&remote).unwrap(), fs::read(&script).unwrap());
    assert_eq!(mode_of(&remote), 0o750);
    let (status, out) = run(&session, "'bin dir/it'\\''s/tool.sh'", None).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "tool ran\n")
    );

    // To an exact path, under another name.
    session.upload(&script, "opt/renamed").await.unwrap();
    assert_eq!(mode_of(&peer.home.join("opt/renamed")), 0o750);

    // And back.
    let back = local.path().join("back");
    let got = session
        .download("bin dir/it's/tool.sh", &back)
        .await
        .unwrap();
    assert_eq!(got, back.join("tool.sh"));
    assert_eq!(fs::read(&got).unwrap(), fs::read(&script).unwrap());
    assert_eq!(mode_of(&got), 0o750);
    let got = session.download("opt/renamed", &back).await.unwrap();
    assert_eq!(got, back.join("renamed"));
    session.close().await.unwrap();
}

#[tokio::test]
async fn upload_and_download_a_file_host() {
    upload_and_download_a_file(Flavour::Host).await;
}

#[tokio::test]
async fn upload_and_download_a_file_busybox() {
    upload_and_download_a_file(Flavour::Busybox).await;
}

async fn upload_and_download_a_tree(flavour: Flavour) {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(flavour, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let local = tempfile::tempdir().unwrap();
    let tree = local.path().join("app");
    make_tree(&tree);
    let expected = snapshot(&tree);

    // Exactly at a path, then into a directory under its own name.
    session.upload(&tree, "deploy/current").await.unwrap();
    assert_eq!(snapshot(&peer.home.join("deploy/current")), expected);
    session
        .upload(&tree, &format!("{}/abs/", peer.home.display()))
        .await
        .unwrap();
    assert_eq!(snapshot(&peer.home.join("abs/app")), expected);

    // Uploading again over an existing tree replaces the files.
    fs::write(tree.join("a.txt"), "changed").unwrap();
    session.upload(&tree, "deploy/current").await.unwrap();
    assert_eq!(
        fs::read_to_string(peer.home.join("deploy/current/a.txt")).unwrap(),
        "changed"
    );

    let back = local.path().join("downloads");
    let got = session.download("abs/app/", &back).await.unwrap();
    assert_eq!(got, back.join("app"));
    assert_eq!(snapshot(&got), expected);
    session.close().await.unwrap();
}

#[tokio::test]
async fn upload_and_download_a_tree_host() {
    upload_and_download_a_tree(Flavour::Host).await;
}

#[tokio::test]
async fn upload_and_download_a_tree_busybox() {
    upload_and_download_a_tree(Flavour::Busybox).await;
}

async fn upload_bytes_writes_an_executable_script(flavour: Flavour) {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(flavour, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    session
        .upload_bytes(b"#!/bin/sh\necho \"hi $1\"\n", "steps/01 run.sh", 0o700)
        .await
        .unwrap();
    assert_eq!(mode_of(&peer.home.join("steps/01 run.sh")), 0o700);
    let (status, out) = run(&session, "'steps/01 run.sh' there", None).await;
    assert_eq!(
        (status, out.text(OutputStream::Stdout).as_str()),
        (0, "hi there\n")
    );

    // Overwriting tightens the mode too.
    session
        .upload_bytes(b"secret", "steps/01 run.sh", 0o600)
        .await
        .unwrap();
    assert_eq!(mode_of(&peer.home.join("steps/01 run.sh")), 0o600);
    assert_eq!(
        fs::read(peer.home.join("steps/01 run.sh")).unwrap(),
        b"secret"
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn upload_bytes_writes_an_executable_script_host() {
    upload_bytes_writes_an_executable_script(Flavour::Host).await;
}

#[tokio::test]
async fn upload_bytes_writes_an_executable_script_busybox() {
    upload_bytes_writes_an_executable_script(Flavour::Busybox).await;
}

async fn transfer_errors_are_clear(flavour: Flavour) {
    let key = KeyPair::generate().unwrap();
    let Some(peer) = Peer::start_with_key(flavour, &key) else {
        return;
    };
    let session = peer.connect(&key).await;
    let target = peer.target().to_string();
    let local = tempfile::tempdir().unwrap();

    let err = session
        .download("no/such path", local.path())
        .await
        .unwrap_err();
    assert!(matches!(err, SshError::RemoteNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("download no/such path from {target}: no such file or directory")
    );

    // A guest-side failure carries the guest's stderr.
    session.upload_bytes(b"x", "afile", 0o644).await.unwrap();
    let src = local.path().join("thing");
    fs::write(&src, "x").unwrap();
    let err = session.upload(&src, "afile/sub/").await.unwrap_err();
    match &err {
        SshError::Transfer {
            direction,
            path,
            message,
            ..
        } => {
            assert_eq!(*direction, TransferDirection::Upload);
            assert_eq!(path, "afile/sub/thing");
            assert!(
                message.starts_with("the guest command exited with status 1: "),
                "{message}"
            );
            assert!(message.contains("Not a directory"), "{message}");
        }
        other => panic!("expected a transfer error, got {other:?}"),
    }
    assert!(
        err.to_string().starts_with(&format!(
            "upload to afile/sub/thing on {target}: the guest command"
        )),
        "{err}"
    );

    // A missing local source is reported with its local path.
    let missing = local.path().join("missing");
    let err = session.upload(&missing, "x").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("read metadata of {}", missing.display())
    );
    session.close().await.unwrap();
}

#[tokio::test]
async fn transfer_errors_are_clear_host() {
    transfer_errors_are_clear(Flavour::Host).await;
}

#[tokio::test]
async fn transfer_errors_are_clear_busybox() {
    transfer_errors_are_clear(Flavour::Busybox).await;
}

/// A tree with nested and empty directories, assorted modes, a symlink and a file large
/// enough to need many chunks and window adjustments.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::create_dir_all(root.join("etc/conf.d")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::write(root.join("a.txt"), "alpha\n").unwrap();
    fs::write(root.join("bin/start"), "#!/bin/sh\nexec true\n").unwrap();
    fs::set_permissions(root.join("bin/start"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("etc/conf.d/secret"), "s3cret").unwrap();
    fs::set_permissions(
        root.join("etc/conf.d/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::write(root.join("etc/with space & 'quote'"), "odd name").unwrap();
    fs::write(root.join("data.bin"), pseudo_random(2 * 1024 * 1024 + 5)).unwrap();
    fs::write(root.join("empty.txt"), "").unwrap();
    std::os::unix::fs::symlink("bin/start", root.join("start-link")).unwrap();
    fs::set_permissions(root.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink { target: PathBuf },
}

/// Everything about a tree that an upload or download must keep.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let meta = fs::symlink_metadata(path).unwrap();
        let rel = path.strip_prefix(root).unwrap().to_path_buf();
        if meta.file_type().is_symlink() {
            out.insert(
                rel,
                Node::Symlink {
                    target: fs::read_link(path).unwrap(),
                },
            );
        } else if meta.is_dir() {
            out.insert(
                rel,
                Node::Dir {
                    mode: meta.permissions().mode() & 0o777,
                },
            );
            for entry in fs::read_dir(path).unwrap() {
                walk(root, &entry.unwrap().path(), out);
            }
        } else {
            out.insert(
                rel,
                Node::File {
                    mode: meta.permissions().mode() & 0o777,
                    content: fs::read(path).unwrap(),
                },
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Incompressible test data without pulling in a random number crate.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
