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
use kiln_config::{Config, Image};
use kiln_ssh::{ConnectOptions, KeyPair, OutputStream, Session, Target};
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventSink};
use crate::gc;
use crate::journal::{Journal, JournalError, StateDir};
use crate::manifest::{InputRecord, Manifest, OutputRecord, StepRecord};
use crate::plan::{BakeStep, ImagePlan, Plan, PlannedStep};
use crate::provider::{
    CaptureRequest, Captured, LaunchRequest, Machine, ProviderError, Registry, Resources, Tracked,
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
    gc::reap_stale(&state, registry, events.as_ref()).await?;

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
            config, image, image_plan, opts, registry, &journal, &events, &state,
        );
        match bake.run(cancel.clone()).await {
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
    journal.finish(&state, status)?;
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
    // Resources, in creation order; cleanup runs in the reverse of this order.
    scratch: Option<(PathBuf, Tracked)>,
    key: Option<KeyPair>,
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
}

impl<E: std::error::Error> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: error_chain(&e),
            details: Vec::new(),
        }
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
            scratch: None,
            key: None,
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

    async fn run(mut self, cancel: CancellationToken) -> Result<Manifest, BuildError> {
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
                    result = Err(BuildError::StepFailed {
                        image: self.image.name.clone(),
                        step: step.id.clone(),
                        message: failure.message,
                        details: failure.details,
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
            BakeStep::Shutdown => self.shutdown().await,
            BakeStep::Capture => self.capture().await,
            BakeStep::Manifest => {
                let manifest = self.manifest();
                manifest.write(&self.plan.manifest).map_err(|e| Failure {
                    message: format!("write {}: {e}", self.plan.manifest.display()),
                    details: Vec::new(),
                })?;
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
        std::fs::create_dir_all(&dir).map_err(|e| Failure {
            message: format!("create {}: {e}", dir.display()),
            details: Vec::new(),
        })?;
        self.scratch = Some((dir, tracked));
        // The private key lives in memory only; it is written to disk only if the machine is
        // kept for inspection (`--on-error=abort`).
        self.key = Some(KeyPair::generate()?);
        Ok(())
    }

    async fn launch(&mut self) -> Result<(), Failure> {
        let provider = self
            .registry
            .get(self.image.source.provider())
            .expect("checked before the run");
        let (scratch, _) = self.scratch.as_ref().expect("prepare ran");
        let key = self.key.as_ref().expect("prepare ran");
        let req = LaunchRequest {
            image: self.image,
            machine_name: self.machine_name(),
            scratch: scratch.clone(),
            ssh_public_key: key.public_openssh(),
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
        let opts = ConnectOptions {
            timeout: self.image.ssh.timeout,
            ..ConnectOptions::default()
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
                if tail.is_empty() {
                    details.push("the console printed nothing".into());
                } else {
                    details.push("last console lines:".into());
                    details.extend(tail.into_iter().map(|l| format!("  | {l}")));
                }
                Err(Failure { message, details })
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
            .map_err(|e: StepError| Failure {
                message: format!(
                    "{} `{}`: {}",
                    step.kind.kind_name(),
                    step.name,
                    error_chain(&e)
                ),
                details: Vec::new(),
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
        stopped.map_err(|e| Failure {
            message: error_chain(&e),
            details: vec![format!(
                "the shutdown command was `{}`; make sure it powers the machine off",
                self.image.shutdown.command
            )],
        })
    }

    async fn capture(&mut self) -> Result<(), Failure> {
        let out_dir = self.plan.output.parent().expect("output has a directory");
        std::fs::create_dir_all(out_dir).map_err(|e| Failure {
            message: format!("create {}: {e}", out_dir.display()),
            details: Vec::new(),
        })?;
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
        let (size, sha256) = finish_file(&path).map_err(|e| Failure {
            message: format!("read back {}: {e}", path.display()),
            details: Vec::new(),
        })?;
        place(&path, &self.plan.output, self.opts.force).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure {
                message: format!(
                    "output {} appeared during the build (use --force to replace it)",
                    self.plan.output.display()
                ),
                details: Vec::new(),
            },
            _ => Failure {
                message: format!("move the image to {}: {e}", self.plan.output.display()),
                details: Vec::new(),
            },
        })?;
        self.res.removed(&tracked)?;
        self.partial = None;
        self.events.emit(Event::ArtifactWritten {
            image: self.image.name.clone(),
            path: self.plan.output.clone(),
            format: format.clone(),
            size,
            sha256: sha256.clone(),
        });
        self.output = Some(OutputRecord {
            path: self.plan.output.clone(),
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
                    path: i.path.clone(),
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
            match key.write_private_openssh(&key_path) {
                Ok(()) => lines.push(format!(
                    "reach it with: ssh -i {} -p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null {}@{}",
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
        self.key = None;
        if let Some((dir, tracked)) = self.scratch.take() {
            match remove_dir(&dir) {
                Ok(()) => {
                    self.note_cleanup(self.res.removed(&tracked).err().map(|e| error_chain(&e)))
                }
                Err(e) => self.note_cleanup(Some(format!("remove {}: {e}", dir.display()))),
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

/// fsync a finished file and return its size and SHA-256.
fn finish_file(path: &Path) -> std::io::Result<(u64, String)> {
    let file = std::fs::File::open(path)?;
    file.sync_all()?;
    let size = file.metadata()?.len();
    Ok((size, crate::digest::sha256_file(path)?))
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
