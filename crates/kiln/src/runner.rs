//! The runner: executes a [`Plan`], one coordinator per run.
//!
//! Owns the run's life: reaping what dead runs left, opening the journal, running each
//! image's steps in order, racing every step against cancellation (SIGINT/SIGTERM arrive as a
//! [`CancellationToken`]), and running cleanups in reverse order on success, failure or
//! interrupt — or, with `--on-error=abort`, leaving the machine up and saying how to reach and
//! remove it. Steps report through the [`EventSink`]; providers create resources only through
//! [`Resources`], which journals them first. It does not parse config or print anything.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use kiln_config::{Config, HostKeyCheck, Image};
use kiln_ssh::{ConnectOptions, HostKeyPolicy, KeyPair, OutputStream, Session, Target};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventSink};
use crate::gc;
use crate::journal::{Journal, JournalError, StateDir};
use crate::manifest::{InputRecord, Manifest, OutputRecord, StepRecord};
use crate::plan::{BakeStep, ImagePlan, Plan, PlannedStep, project_relative};
use crate::provider::{
    CaptureRequest, Captured, HostKey, LaunchRequest, Machine, ProviderError, Registry, Resources,
    Tracked,
};
use crate::provision::{self, StepContext, StepError};

/// What to do with the machine when a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnError {
    /// Stop the machine and remove everything (default).
    #[default]
    Cleanup,
    /// Keep the machine running for inspection; `kiln gc` removes it later.
    Abort,
}

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    pub on_error: OnError,
    /// Replace existing outputs.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{image}: step {step} failed: {message}")]
    StepFailed {
        image: String,
        step: String,
        message: String,
        /// Extra lines for people (console tail, how to reach a kept machine).
        details: Vec<String>,
    },
    #[error("output {path} already exists (use --force to replace it)")]
    OutputExists { path: PathBuf },
    /// kiln itself failed inside a step (the journal or the state directory): exit 70.
    #[error("{image}: step {step} failed: {message}")]
    Internal {
        image: String,
        step: String,
        message: String,
    },
    #[error("interrupted")]
    Interrupted,
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("provider `{0}` is not available in this build of kiln")]
    UnknownProvider(String),
}

/// What a successful build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub run_id: String,
    pub manifests: Vec<Manifest>,
}

/// Run `plan`: reap leftovers of dead runs, then bake each image in order.
pub async fn build(
    config: &Config,
    plan: &Plan,
    opts: &BuildOptions,
    registry: &Registry,
    events: Arc<dyn EventSink>,
    cancel: CancellationToken,
) -> Result<BuildReport, BuildError> {
    if !opts.force {
        for image in &plan.images {
            if image.output.exists() {
                return Err(BuildError::OutputExists {
                    path: image.output.clone(),
                });
            }
        }
    }
    for image in &plan.images {
        if registry.get(&image.provider).is_none() {
            return Err(BuildError::UnknownProvider(image.provider.clone()));
        }
    }

    let state = StateDir::new(&config.root);
    gc::reap_stale(&state, registry, events.as_ref(), &cancel).await?;
    if cancel.is_cancelled() {
        return Err(BuildError::Interrupted);
    }

    let journal = Arc::new(state.begin_run("build")?);
    let run_id = journal.run_id().to_string();
    let started = Instant::now();
    events.emit(Event::RunStarted {
        run_id: run_id.clone(),
        command: "build".into(),
        images: plan.images.iter().map(|i| i.image.clone()).collect(),
    });

    let mut manifests = Vec::new();
    let mut outcome = Ok(());
    for image_plan in &plan.images {
        let image = config
            .images
            .iter()
            .find(|i| i.name == image_plan.image)
            .expect("the plan names images of this config");
        let bake = Bake::new(
            config, image, image_plan, opts, registry, &journal, &events, &state, &cancel,
        );
        match bake.run().await {
            Ok(manifest) => manifests.push(manifest),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }

    let status = match &outcome {
        Ok(()) => "succeeded",
        Err(BuildError::Interrupted) => "interrupted",
        Err(_) => "failed",
    };
    events.emit(Event::RunFinished {
        run_id: run_id.clone(),
        status: status.into(),
        duration_s: started.elapsed().as_secs_f64(),
    });
    // A failure to close the journal must not hide the failure that ended the run; after a
    // success it is the run's error (the journal still lists what `kiln gc` must look at).
    match (journal.finish(&state, status), &outcome) {
        (Err(e), Ok(())) => return Err(e.into()),
        (Err(e), Err(_)) => events.emit(Event::Note {
            image: None,
            message: format!("could not close the journal: {}", error_chain(&e)),
        }),
        (Ok(()), _) => {}
    }
    outcome.map(|()| BuildReport { run_id, manifests })
}

/// One image's bake: the steps' shared state and its cleanup order.
struct Bake<'a> {
    config: &'a Config,
    image: &'a Image,
    plan: &'a ImagePlan,
    opts: &'a BuildOptions,
    registry: &'a Registry,
    events: Arc<dyn EventSink>,
    res: Resources,
    state: &'a StateDir,
    nonce: String,
    started: Timestamp,
    /// The run's cancellation, for blocking work that cannot be dropped like a future.
    cancel: CancellationToken,
    // Resources, in creation order; cleanup runs in the reverse of this order.
    scratch: Option<(PathBuf, Tracked)>,
    key: Option<KeyPair>,
    /// The guest's pinned host key (`ssh.host_key = "pinned"`); in memory only.
    host_key: Option<KeyPair>,
    machine: Option<Box<dyn Machine>>,
    session: Option<Session>,
    partial: Option<Tracked>,
    // Results for the manifest.
    records: Vec<StepRecord>,
    output: Option<OutputRecord>,
    /// The manifest as written by the manifest step (what the build reports).
    written: Option<Manifest>,
}

/// A step failure with what people need to act on it.
struct Failure {
    message: String,
    details: Vec<String>,
    /// kiln's own fault (journal, state directory), not the guest's or the user's: the run
    /// exits 70, not 1.
    internal: bool,
}

impl Failure {
    fn step(message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            details: Vec::new(),
            internal: false,
        }
    }

    fn internal(message: impl Into<String>) -> Failure {
        Failure {
            internal: true,
            ..Failure::step(message)
        }
    }

    fn with_details(mut self, details: Vec<String>) -> Failure {
        self.details = details;
        self
    }
}

// One conversion per error type, not a blanket `impl<E: Error>`: that flattened a journal
// failure into the same "step failed" as a guest's non-zero exit.
impl From<JournalError> for Failure {
    fn from(e: JournalError) -> Self {
        Failure::internal(error_chain(&e))
    }
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::Journal(_) => Failure::internal(error_chain(&e)),
            _ => Failure::step(error_chain(&e)),
        }
    }
}

impl From<kiln_ssh::SshError> for Failure {
    fn from(e: kiln_ssh::SshError) -> Self {
        Failure::step(error_chain(&e))
    }
}

/// "outer: inner: innermost", the way people read a cause chain on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

impl<'a> Bake<'a> {
    #[expect(
        clippy::too_many_arguments,
        reason = "a constructor for the bake's shared context"
    )]
    fn new(
        config: &'a Config,
        image: &'a Image,
        plan: &'a ImagePlan,
        opts: &'a BuildOptions,
        registry: &'a Registry,
        journal: &Arc<Journal>,
        events: &Arc<dyn EventSink>,
        state: &'a StateDir,
        cancel: &CancellationToken,
    ) -> Self {
        Bake {
            config,
            image,
            plan,
            opts,
            registry,
            events: events.clone(),
            res: Resources::new(journal.clone(), events.clone(), Some(image.name.clone())),
            state,
            nonce: format!("kiln-{}", journal.run_id()),
            started: Timestamp::now(),
            cancel: cancel.clone(),
            scratch: None,
            key: None,
            host_key: None,
            machine: None,
            session: None,
            partial: None,
            records: Vec::new(),
            output: None,
            written: None,
        }
    }

    fn machine_name(&self) -> String {
        format!("kiln-{}-{}", self.res.journal().run_id(), self.image.name)
    }

    async fn run(mut self) -> Result<Manifest, BuildError> {
        let cancel = self.cancel.clone();
        let mut result = Ok(());
        for step in &self.plan.steps {
            if cancel.is_cancelled() {
                result = Err(BuildError::Interrupted);
                break;
            }
            let at = Timestamp::now();
            let clock = Instant::now();
            self.events.emit(Event::StepStarted {
                image: self.image.name.clone(),
                step: step.id.clone(),
                name: step.title.clone(),
            });
            let outcome = tokio::select! {
                biased;
                () = cancel.cancelled() => None,
                r = self.execute(step) => Some(r),
            };
            let duration_s = clock.elapsed().as_secs_f64();
            match outcome {
                Some(Ok(())) => {
                    self.events.emit(Event::StepFinished {
                        image: self.image.name.clone(),
                        step: step.id.clone(),
                        duration_s,
                    });
                    self.records.push(StepRecord {
                        id: step.id.clone(),
                        title: step.title.clone(),
                        key: step.key.clone(),
                        started: at,
                        duration_s,
                    });
                }
                Some(Err(failure)) => {
                    self.events.emit(Event::StepFailed {
                        image: self.image.name.clone(),
                        step: step.id.clone(),
                        duration_s,
                        error: failure.message.clone(),
                    });
                    result = Err(if failure.internal {
                        BuildError::Internal {
                            image: self.image.name.clone(),
                            step: step.id.clone(),
                            message: failure.message,
                        }
                    } else {
                        BuildError::StepFailed {
                            image: self.image.name.clone(),
                            step: step.id.clone(),
                            message: failure.message,
                            details: failure.details,
                        }
                    });
                    break;
                }
                None => {
                    self.events.emit(Event::StepFailed {
                        image: self.image.name.clone(),
                        step: step.id.clone(),
                        duration_s,
                        error: "interrupted".into(),
                    });
                    result = Err(BuildError::Interrupted);
                    break;
                }
            }
        }

        match result {
            Err(BuildError::StepFailed {
                image,
                step,
                message,
                mut details,
            }) if self.opts.on_error == OnError::Abort && self.machine.is_some() => {
                details.extend(self.keep()?);
                Err(BuildError::StepFailed {
                    image,
                    step,
                    message,
                    details,
                })
            }
            Err(e) => {
                self.cleanup().await;
                Err(e)
            }
            Ok(()) => {
                self.cleanup().await;
                Ok(self.written.take().expect("the manifest step ran"))
            }
        }
    }

    async fn execute(&mut self, step: &PlannedStep) -> Result<(), Failure> {
        match step.step {
            BakeStep::Prepare => self.prepare(),
            BakeStep::Launch => self.launch().await,
            BakeStep::Connect => self.connect().await,
            BakeStep::Provision(i) => {
                let image = self.image;
                self.provision(&image.provision[i], step).await
            }
            BakeStep::Test(i) => {
                let image = self.image;
                self.provision(&image.test[i], step).await
            }
            BakeStep::Generalize => {
                let key = self.key.as_ref().expect("prepare ran").public_openssh();
                let host_key = self.host_key.as_ref().map(|k| k.public_openssh());
                let traces = crate::generalize::Traces {
                    build_key: &key,
                    host_key: host_key.as_deref(),
                    nonce: &self.nonce,
                };
                match crate::generalize::step(&self.image.generalize, &self.image.ssh.user, &traces)
                {
                    Some(generalize) => self.provision(&generalize, step).await,
                    None => Ok(()),
                }
            }
            BakeStep::Shutdown => self.shutdown().await,
            BakeStep::Capture => self.capture().await,
            BakeStep::Manifest => {
                let manifest = self.manifest();
                manifest.write(&self.plan.manifest).map_err(|e| {
                    Failure::step(format!("write {}: {e}", self.plan.manifest.display()))
                })?;
                // The image has its manifest: it is the user's now, no longer the run's.
                if let Some(placed) = self.partial.take() {
                    self.res.journal().remove(placed.rid)?;
                }
                self.written = Some(manifest);
                Ok(())
            }
        }
    }

    fn prepare(&mut self) -> Result<(), Failure> {
        let dir = self
            .state
            .run_tmp(self.res.journal().run_id())
            .join(&self.image.name);
        let tracked = self.res.creating(
            "local",
            "dir",
            dir.display().to_string(),
            Default::default(),
        )?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::internal(format!("create {}: {e}", dir.display())))?;
        self.scratch = Some((dir, tracked));
        // The private key lives in memory only; it is written to disk only if the machine is
        // kept for inspection (`--on-error=abort`).
        self.key = Some(KeyPair::generate()?);
        if self.image.ssh.host_key == HostKeyCheck::Pinned {
            self.host_key = Some(KeyPair::generate_host_key()?);
        }
        Ok(())
    }

    async fn launch(&mut self) -> Result<(), Failure> {
        let provider = self
            .registry
            .get(self.image.source.provider())
            .expect("checked before the run");
        let (scratch, _) = self.scratch.as_ref().expect("prepare ran");
        let key = self.key.as_ref().expect("prepare ran");
        let host_key = match &self.host_key {
            Some(k) => Some(HostKey {
                private_openssh: k.private_openssh()?,
                public_openssh: k.public_openssh(),
            }),
            None => None,
        };
        let req = LaunchRequest {
            image: self.image,
            machine_name: self.machine_name(),
            scratch: scratch.clone(),
            ssh_public_key: key.public_openssh(),
            host_key,
        };
        let machine = provider.launch(&req, &self.res).await?;
        self.machine = Some(machine);
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), Failure> {
        let machine = self.machine.as_mut().expect("launch ran");
        let endpoint = machine.ssh_endpoint();
        let target = Target {
            host: endpoint.host.clone(),
            port: endpoint.port,
            user: self.image.ssh.user.clone(),
        };
        let key = self.key.as_ref().expect("prepare ran");
        let policy = match &self.host_key {
            Some(host_key) => HostKeyPolicy::pinned(host_key),
            None => HostKeyPolicy::AcceptNew,
        };
        let opts = ConnectOptions {
            timeout: self.image.ssh.timeout,
            ..ConnectOptions::new(policy)
        };
        let connecting = kiln_ssh::connect(&target, key, &opts);
        tokio::pin!(connecting);
        let result = loop {
            tokio::select! {
                r = &mut connecting => break r.map_err(|e| error_chain(&e)),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if let Some(reason) = machine.exited() {
                        break Err(format!("the machine stopped before SSH answered ({reason})"));
                    }
                }
            }
        };
        match result {
            Ok(session) => {
                self.session = Some(session);
                Ok(())
            }
            Err(message) => {
                let tail = machine.console_tail(15);
                let mut details = vec![format!(
                    "waited for SSH on {}:{} as {}",
                    endpoint.host, endpoint.port, self.image.ssh.user
                )];
                if let Some(cause) = machine.diagnose_unreachable() {
                    details.push(format!("likely cause: {cause}"));
                }
                if tail.is_empty() {
                    details.push("the console printed nothing".into());
                } else {
                    details.push("last console lines:".into());
                    details.extend(tail.into_iter().map(|l| format!("  | {l}")));
                }
                Err(Failure::step(message).with_details(details))
            }
        }
    }

    async fn provision(
        &mut self,
        step: &kiln_config::Step,
        planned: &PlannedStep,
    ) -> Result<(), Failure> {
        let session = self.session.as_ref().expect("connect ran");
        let ctx = StepContext {
            image: self.image.name.clone(),
            step_id: planned.id.clone(),
            events: self.events.clone(),
            nonce: self.nonce.clone(),
        };
        provision::run(session, step, &ctx)
            .await
            .map_err(|e: StepError| {
                Failure::step(format!(
                    "{} `{}`: {}",
                    step.kind.kind_name(),
                    step.name,
                    error_chain(&e)
                ))
            })
    }

    async fn shutdown(&mut self) -> Result<(), Failure> {
        let session = self.session.take().expect("connect ran");
        let machine = self.machine.as_mut().expect("launch ran");
        let timeout = self.image.shutdown.timeout;
        let mut ignore = |_: OutputStream, _: &[u8]| {};
        // The guest dies under the command, so the exec may end with an error or never end;
        // what counts is the machine stopping.
        let stopped = {
            let exec = session.exec(&self.image.shutdown.command, Some(&[]), &mut ignore);
            tokio::pin!(exec);
            let stop = machine.wait_stopped(timeout);
            tokio::pin!(stop);
            let mut exec_done = false;
            loop {
                tokio::select! {
                    r = &mut stop => break r,
                    _ = &mut exec, if !exec_done => exec_done = true,
                }
            }
        };
        drop(session);
        stopped.map_err(|e| {
            Failure::from(e).with_details(vec![format!(
                "the shutdown command was `{}`; make sure it powers the machine off",
                self.image.shutdown.command
            )])
        })
    }

    async fn capture(&mut self) -> Result<(), Failure> {
        let out_dir = self.plan.output.parent().expect("output has a directory");
        std::fs::create_dir_all(out_dir)
            .map_err(|e| Failure::step(format!("create {}: {e}", out_dir.display())))?;
        let partial = out_dir.join(format!(
            ".{}.partial-{}",
            self.image.output.file_name,
            self.res.journal().run_id()
        ));
        let tracked = self.res.creating(
            "local",
            "file",
            partial.display().to_string(),
            Default::default(),
        )?;
        self.partial = Some(tracked.clone());
        let machine = self.machine.as_mut().expect("launch ran");
        let captured = machine
            .capture(&CaptureRequest {
                output: &self.image.output,
                path: &partial,
            })
            .await?;
        let Captured::LocalFile { path, format } = captured;
        // fsync and SHA-256 of a multi-gigabyte image take seconds: off the async workers,
        // and stopping at the next chunk once the run is cancelled.
        let (size, sha256) = {
            let file = path.clone();
            let cancel = self.cancel.clone();
            tokio::task::spawn_blocking(move || finish_file(&file, &cancel))
                .await
                .map_err(|e| Failure::internal(format!("read back the image: {e}")))?
                .map_err(|e| Failure::step(format!("read back {}: {e}", path.display())))?
        };
        // The image stays this run's to remove until its manifest is written, so a build that
        // fails or is interrupted from here on leaves no image without a manifest (and
        // `kiln gc` removes it after `kill -9`). Journaled before the name exists.
        let placed = self.res.creating(
            "local",
            "file",
            self.plan.output.display().to_string(),
            crate::provider::data(serde_json::json!({
                "purpose": "output until its manifest is written"
            })),
        )?;
        // An old manifest must not describe the image that replaces its own.
        if self.opts.force {
            match std::fs::remove_file(&self.plan.manifest) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    self.res.journal().remove(placed.rid)?;
                    return Err(Failure::step(format!(
                        "remove the old manifest {}: {e}",
                        self.plan.manifest.display()
                    )));
                }
                _ => {}
            }
        }
        if let Err(e) = place(&path, &self.plan.output, self.opts.force) {
            // Nothing was placed: the name (if it exists) is someone else's file.
            self.res.journal().remove(placed.rid)?;
            return Err(match e.kind() {
                std::io::ErrorKind::AlreadyExists => Failure::step(format!(
                    "output {} appeared during the build (use --force to replace it)",
                    self.plan.output.display()
                )),
                _ => Failure::step(format!(
                    "move the image to {}: {e}",
                    self.plan.output.display()
                )),
            });
        }
        self.res.removed(&tracked)?;
        self.partial = Some(placed);
        self.events.emit(Event::ArtifactWritten {
            image: self.image.name.clone(),
            path: self.plan.output.clone(),
            format: format.clone(),
            size,
            sha256: sha256.clone(),
        });
        self.output = Some(OutputRecord {
            path: project_relative(&self.config.root, &self.plan.output),
            format,
            compressed: self.image.output.compress,
            size,
            sha256,
        });
        Ok(())
    }

    fn manifest(&self) -> Manifest {
        Manifest {
            schema: crate::manifest::SCHEMA_VERSION,
            run_id: self.res.journal().run_id().to_string(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            project: self.config.project.name.clone(),
            image: self.image.name.clone(),
            provider: self.plan.provider.clone(),
            source: self
                .plan
                .source_inputs
                .iter()
                .map(|i| InputRecord {
                    path: project_relative(&self.config.root, &i.path),
                    sha256: i.sha256.clone(),
                })
                .collect(),
            machine: self.machine.as_ref().map(|m| m.facts()).unwrap_or_default(),
            output: self
                .output
                .clone()
                .expect("the manifest step runs after capture"),
            steps: self.records.clone(),
            started: self.started,
            finished: Timestamp::now(),
        }
    }

    /// Leave the machine up for inspection: write the key where the user can use it, mark
    /// every live resource as kept, and say how to get in and how to clean up.
    fn keep(&mut self) -> Result<Vec<String>, BuildError> {
        let mut lines = Vec::new();
        let machine = self.machine.as_mut().expect("checked by the caller");
        let endpoint = machine.ssh_endpoint();
        lines.push(machine.keep());
        if let (Some((scratch, _)), Some(key)) = (&self.scratch, &self.key) {
            let key_path = scratch.join("id_ed25519");
            // With a pinned host key, people get the same check kiln made: a known_hosts file
            // holding only that key.
            let host_check = match &self.host_key {
                Some(host_key) => {
                    let known = scratch.join("known_hosts");
                    let line = format!(
                        "[{}]:{} {}\n",
                        endpoint.host,
                        endpoint.port,
                        host_key.public_openssh()
                    );
                    match std::fs::write(&known, line) {
                        Ok(()) => format!(
                            "-o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
                            known.display()
                        ),
                        Err(_) => {
                            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".into()
                        }
                    }
                }
                None => "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null".into(),
            };
            match key.write_private_openssh(&key_path) {
                Ok(()) => lines.push(format!(
                    "reach it with: ssh -i {} -p {} {host_check} {}@{}",
                    key_path.display(),
                    endpoint.port,
                    self.image.ssh.user,
                    endpoint.host
                )),
                Err(e) => lines.push(format!("could not write the SSH key: {e}")),
            }
        }
        self.res.journal().keep_all()?;
        lines.push(format!(
            "remove it with: kiln -C {} gc",
            self.config.root.display()
        ));
        // The machine is marked kept, so dropping our handle leaves it running.
        self.session = None;
        self.machine = None;
        Ok(lines)
    }

    /// Undo in reverse order of creation. Failures are reported and the journal keeps the
    /// resource, so `kiln gc` can retry.
    async fn cleanup(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), session.close()).await;
        }
        if let Some(tracked) = self.partial.take() {
            let _ = std::fs::remove_file(&tracked.resource.id);
            self.note_cleanup(self.res.removed(&tracked).err().map(|e| error_chain(&e)));
        }
        if let Some(mut machine) = self.machine.take() {
            let result = machine.destroy().await;
            self.note_cleanup(result.err().map(|e: ProviderError| error_chain(&e)));
            // Facts are gone with the machine; the manifest was written before cleanup.
        }
        self.sweep().await;
        self.key = None;
        self.host_key = None;
        if let Some((dir, tracked)) = self.scratch.take() {
            match remove_dir(&dir) {
                Ok(()) => {
                    self.note_cleanup(self.res.removed(&tracked).err().map(|e| error_chain(&e)))
                }
                Err(e) => self.note_cleanup(Some(format!("remove {}: {e}", dir.display()))),
            }
        }
    }

    /// Remove whatever the journal still lists as alive for this image, newest first,
    /// through the provider that owns it. The handles above cover the normal case; this
    /// covers a step interrupted between creating a resource and handing it over (a QEMU
    /// spawned while `launch` was still waiting for it to come up), so that no instant of a
    /// step can leak what it created. The scratch directory goes last, after this.
    async fn sweep(&mut self) {
        let scratch_rid = self.scratch.as_ref().map(|(_, t)| t.rid);
        let mine: Vec<(u64, crate::journal::Resource)> = self
            .res
            .journal()
            .live()
            .into_iter()
            .filter(|(rid, r)| {
                r.image.as_deref() == Some(self.image.name.as_str()) && Some(*rid) != scratch_rid
            })
            .collect();
        for (rid, resource) in mine.into_iter().rev() {
            let Some(provider) = self.registry.get(&resource.provider) else {
                self.note_cleanup(Some(format!(
                    "provider `{}` is not available to remove {} {}",
                    resource.provider, resource.kind, resource.id
                )));
                continue;
            };
            match provider.destroy(&resource).await {
                Ok(()) => {
                    let tracked = Tracked { rid, resource };
                    self.note_cleanup(self.res.removed(&tracked).err().map(|e| error_chain(&e)));
                }
                Err(e) => self.note_cleanup(Some(error_chain(&e))),
            }
        }
    }

    fn note_cleanup(&self, error: Option<String>) {
        if let Some(error) = error {
            self.events.emit(Event::Note {
                image: Some(self.image.name.clone()),
                message: format!("cleanup failed, `kiln gc` will retry: {error}"),
            });
        }
    }
}

fn remove_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => {
            // The run's parent scratch dir goes when its last image's dir does.
            if let Some(parent) = dir.parent() {
                let _ = std::fs::remove_dir(parent);
            }
            Ok(())
        }
    }
}

/// fsync a finished file and return its size and SHA-256; gives up at the next chunk once
/// `cancel` is set.
fn finish_file(path: &Path, cancel: &CancellationToken) -> std::io::Result<(u64, String)> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    let sha256 = crate::digest::sha256_file_until(path, &|| cancel.is_cancelled())?;
    Ok((size, sha256))
}

/// Move a finished file into place. Without `force` an existing file is never replaced, even
/// one that appeared during the build: a hard link fails if the name exists, a rename doesn't.
fn place(from: &Path, to: &Path, force: bool) -> std::io::Result<()> {
    if force {
        std::fs::rename(from, to)
    } else {
        std::fs::hard_link(from, to)?;
        std::fs::remove_file(from)
    }
}
