//! The provider conformance suite (STYLE.md §13): what every `Provider` must do, written once
//! against `&dyn Provider` and run for each implementation. Today: `qemu`, with the tiny guest.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::events::{Event, EventSink, Recorder};
use kiln::journal::{Resource, StateDir};
use kiln::provider::{
    CaptureRequest, Captured, HostKey, LaunchRequest, Provider, Registry, Resources,
};
use kiln_ssh::{ConnectOptions, HostKeyPolicy, KeyPair, Target};

use common::{read_from_image, tiny_guest};

/// Records events and, at each `resource_created` (sent after the journal record is written
/// and before the resource is made), asks the owning provider whether the resource already
/// exists: it must not, or it was created before it was journaled.
#[derive(Debug)]
struct JournaledFirst {
    events: Recorder,
    registry: Registry,
    runtime: tokio::runtime::Handle,
    existed_before_record: Mutex<Vec<String>>,
}

impl EventSink for JournaledFirst {
    fn emit(&self, event: Event) {
        if let Event::ResourceCreated {
            image,
            provider,
            kind,
            id,
        } = &event
            && let Some(owner) = self.registry.get(provider)
        {
            let resource = Resource {
                provider: provider.clone(),
                kind: kind.clone(),
                id: id.clone(),
                image: image.clone(),
                data: Default::default(),
            };
            let exists =
                tokio::task::block_in_place(|| self.runtime.block_on(owner.exists(&resource)));
            if exists.unwrap_or(false) {
                self.existed_before_record
                    .lock()
                    .unwrap()
                    .push(format!("{provider} {kind} {id}"));
            }
        }
        self.events.emit(event);
    }
}

/// Launch, reach over SSH with the pinned host key, write into the guest, stop it from
/// inside, capture and read the write back out of the image, destroy; every resource
/// journaled before it existed and gone afterwards; destroying twice and destroying what is
/// gone succeed.
async fn launch_exec_capture_destroy(provider: Arc<dyn Provider>, image: &kiln_config::Image) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::new(dir.path());
    let journal = Arc::new(state.begin_run("conformance").unwrap());
    let events = Arc::new(JournaledFirst {
        events: Recorder::default(),
        registry: Registry::builtin(),
        runtime: tokio::runtime::Handle::current(),
        existed_before_record: Mutex::new(Vec::new()),
    });
    let res = Resources::new(journal.clone(), events.clone(), Some(image.name.clone()));
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let key = KeyPair::generate().unwrap();
    let host_key = KeyPair::generate_host_key().unwrap();

    let req = LaunchRequest {
        image,
        machine_name: format!("kiln-{}-{}", journal.run_id(), image.name),
        scratch: scratch.clone(),
        ssh_public_key: key.public_openssh(),
        host_key: Some(HostKey {
            private_openssh: host_key.private_openssh().unwrap(),
            public_openssh: host_key.public_openssh(),
        }),
    };
    let mut machine = provider.launch(&req, &res).await.unwrap();
    assert_eq!(
        *events.existed_before_record.lock().unwrap(),
        Vec::<String>::new(),
        "resources that existed before their journal record"
    );
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
        ..ConnectOptions::new(HostKeyPolicy::pinned(&host_key))
    };
    let session = kiln_ssh::connect(&target, &key, &opts).await.unwrap();
    assert_eq!(session.host_key_fingerprint(), host_key.fingerprint());
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
    // What was written in the guest is in the image: capturing the base disk, or the disk
    // before the guest flushed it, would not pass.
    assert_eq!(read_from_image(&path, "/etc/conformance"), "conformance\n");

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
        .events
        .events()
        .iter()
        .filter(|e| matches!(e, Event::ResourceCreated { .. }))
        .count();
    let removed_events = events
        .events
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
