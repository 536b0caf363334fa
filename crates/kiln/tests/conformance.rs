//! The provider conformance suite (STYLE.md §13): what every `Provider` must do, written once
//! against `&dyn Provider` and run for each implementation. Today: `qemu`, with the tiny guest.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kiln::events::{Event, Recorder};
use kiln::journal::StateDir;
use kiln::provider::{CaptureRequest, Captured, LaunchRequest, Provider, Resources};
use kiln_ssh::{ConnectOptions, KeyPair, Target};

use common::tiny_guest;

/// Launch, reach over SSH, stop from inside, capture, destroy; every resource journaled
/// before use and gone afterwards; destroying twice and destroying what is gone succeed.
async fn launch_exec_capture_destroy(provider: Arc<dyn Provider>, image: &kiln_config::Image) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let journal = Arc::new(state.begin_run("conformance").unwrap());
    let events = Arc::new(Recorder::default());
    let res = Resources::new(journal.clone(), events.clone(), Some(image.name.clone()));
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let key = KeyPair::generate().unwrap();

    let req = LaunchRequest {
        image,
        machine_name: format!("kiln-{}-{}", journal.run_id(), image.name),
        scratch: scratch.clone(),
        ssh_public_key: key.public_openssh(),
    };
    let mut machine = provider.launch(&req, &res).await.unwrap();
    let created: Vec<kiln::journal::Resource> =
        journal.live().into_iter().map(|(_, r)| r).collect();
    assert!(!created.is_empty(), "launch journals what it creates");
    for r in &created {
        if r.provider == provider.name() {
            assert!(
                provider.exists(r).await.unwrap(),
                "{r:?} exists while the machine runs"
            );
        }
    }
    assert!(machine.exited().is_none());

    let endpoint = machine.ssh_endpoint();
    let target = Target {
        host: endpoint.host,
        port: endpoint.port,
        user: image.ssh.user.clone(),
    };
    let opts = ConnectOptions {
        timeout: Duration::from_secs(120),
        ..ConnectOptions::default()
    };
    let session = kiln_ssh::connect(&target, &key, &opts).await.unwrap();
    let mut out = Vec::new();
    let status = session
        .exec(
            "echo conformance > /etc/conformance && cat /etc/conformance",
            None,
            &mut |_, b| out.extend_from_slice(b),
        )
        .await
        .unwrap();
    assert_eq!((status, out.as_slice()), (0, b"conformance\n".as_slice()));

    let mut ignore = |_: kiln_ssh::OutputStream, _: &[u8]| {};
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        session.exec(&image.shutdown.command, Some(&[]), &mut ignore),
    )
    .await;
    machine.wait_stopped(image.shutdown.timeout).await.unwrap();

    let path = dir.path().join("captured.img");
    let captured = machine
        .capture(&CaptureRequest {
            output: &image.output,
            path: &path,
        })
        .await
        .unwrap();
    let Captured::LocalFile { path: got, .. } = captured;
    assert_eq!(got, path);
    assert!(std::fs::metadata(&path).unwrap().len() > 0);

    machine.destroy().await.unwrap();
    machine.destroy().await.expect("destroy is idempotent");
    assert_eq!(
        journal.live(),
        Vec::new(),
        "every resource recorded as removed"
    );
    for r in &created {
        if r.provider == provider.name() {
            assert!(!provider.exists(r).await.unwrap(), "{r:?} is gone");
            provider
                .destroy(r)
                .await
                .expect("destroying what is gone succeeds");
        }
    }
    let created_events = events
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ResourceCreated { .. }))
        .count();
    let removed_events = events
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ResourceRemoved { .. }))
        .count();
    assert_eq!(created_events, removed_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_provider_conforms() {
    let Some(guest) = tiny_guest() else { return };
    let append = std::fs::read_to_string(guest.join("append.txt")).unwrap();
    let toml = format!(
        r#"[project]
name = "conformance"
[[image]]
name = "tiny"
source = {{ qemu = {{ disk = "{g}/base.qcow2", kernel = "{g}/vmlinuz", initrd = "{g}/initrd.gz", append = "{a}", memory = 256 }} }}
shutdown = {{ command = "sync; mount -o remount,ro /; poweroff -f", timeout = "1m" }}
"#,
        g = guest.display(),
        a = append.trim()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = kiln_config::load_str(
        std::path::Path::new("kiln.toml"),
        &toml,
        dir.path(),
        &kiln_config::LoadOptions::default(),
    )
    .unwrap();
    let provider = kiln::provider::Registry::builtin().get("qemu").unwrap();
    launch_exec_capture_destroy(provider, &config.images[0]).await;
}
