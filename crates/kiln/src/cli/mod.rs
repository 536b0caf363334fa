//! The command line: argument parsing, dispatch, and the one place errors become exit codes.
//!
//! Owns the verbs (`init`, `validate`, `plan`, `build`, `gc`, `status`), global flags, signal
//! handling for a run (SIGINT/SIGTERM cancel the coordinator's token), and how results and
//! errors are shown. Everything a verb does is library code in the other modules.

mod exit;
mod init;
mod output;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

pub use exit::ExitCode;
use output::{HumanSink, JsonSink, Verbosity};

use crate::events::EventSink;
use crate::gc::{self, GcOptions};
use crate::journal::StateDir;
use crate::plan;
use crate::provider::Registry;
use crate::runner::{self, BuildError, BuildOptions, OnError};

/// Bake machine images and ship releases from one declarative file.
#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about,
    long_about = "Bake machine images and ship releases from one declarative file, kiln.toml.\n\n\
        Every resource a run creates is journaled under .kiln/ before it exists, so a failed,\n\
        interrupted or killed run leaves nothing behind that `kiln gc` cannot remove.",
    after_help = "Exit codes: 0 success, 1 build or cleanup failed, 2 usage or configuration error, \
        70 internal error, 130 interrupted.\nDocs: README.md, docs/config.md, docs/manifest.md, docs/events.md."
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', long = "directory", global = true, value_name = "DIR")]
    directory: Option<PathBuf>,
    /// The configuration file.
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        default_value = "kiln.toml"
    )]
    file: PathBuf,
    /// More output: each -v adds detail (resources, debug logs).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Only errors and the final result.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Machine-readable output: one JSON object per line on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented kiln.toml for a local QEMU bake.
    Init(InitArgs),
    /// Check kiln.toml and report every problem with file, line, column and key.
    Validate(VarArgs),
    /// Show the steps a build would run, in order, with their cleanups.
    Plan(PlanArgs),
    /// Bake images: launch, provision, test, shut down, write the image and its manifest.
    Build(BuildArgs),
    /// Remove whatever crashed, killed or aborted runs left behind.
    Gc(GcArgs),
    /// List live and leaked resources recorded in the journal.
    Status,
}

#[derive(Debug, Args)]
struct VarArgs {
    /// Set a variable declared in [vars] (repeatable; later wins).
    #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
    vars: Vec<(String, String)>,
    /// Read variables from a TOML file of `name = "value"` lines (repeatable).
    #[arg(long = "var-file", value_name = "FILE")]
    var_files: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Overwrite an existing kiln.toml.
    #[arg(long)]
    force: bool,
    /// The base disk image to start from (qcow2 or raw).
    #[arg(long, value_name = "PATH", default_value = "base.qcow2")]
    disk: String,
    /// Project name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Debug, Args)]
struct PlanArgs {
    /// Only these images (default: all).
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    #[command(flatten)]
    vars: VarArgs,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Only these images (default: all).
    #[arg(value_name = "IMAGE")]
    images: Vec<String>,
    /// On a failed step: `cleanup` removes everything; `abort` keeps the machine running and
    /// prints how to reach it and how to remove it later.
    #[arg(long, value_enum, default_value_t = OnError::Cleanup)]
    on_error: OnError,
    /// Replace outputs that already exist.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    vars: VarArgs,
}

#[derive(Debug, Args)]
struct GcArgs {
    /// List what would be removed, change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got `{s}`")),
    }
}

/// The whole program after the binary's error reporter is installed.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::Usage
            } else {
                ExitCode::Success
            };
        }
    };
    output::init_colors();
    init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return report(
                ExitCode::Internal,
                &format!("start the async runtime: {e}"),
                &[],
            );
        }
    };
    let code = runtime.block_on(run(cli));
    // Blocking work a cancelled run left (hashing a big file) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

fn init_tracing(cli: &Cli) {
    let default = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Print an error (and details) for people and pick the exit code.
fn report(code: ExitCode, message: &str, details: &[String]) -> ExitCode {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{} {message}", console::style("error:").red().bold());
    for d in details {
        let _ = writeln!(err, "  {d}");
    }
    code
}

struct Project {
    dir: PathBuf,
    file: PathBuf,
}

impl Project {
    fn from_cli(cli: &Cli) -> Result<Project, ExitCode> {
        let dir = match &cli.directory {
            Some(d) => d.clone(),
            None => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(report(
                ExitCode::Usage,
                &format!("directory {} does not exist", dir.display()),
                &[],
            ));
        }
        // Without -C the file is shown exactly as given, so messages read `kiln.toml:3:1`.
        let file = match &cli.directory {
            Some(d) if cli.file.is_relative() => d.join(&cli.file),
            _ => cli.file.clone(),
        };
        Ok(Project { dir, file })
    }

    fn load(&self, vars: &VarArgs) -> Result<kiln_config::Config, ExitCode> {
        let opts = kiln_config::LoadOptions {
            vars: vars.vars.clone(),
            var_files: vars.var_files.clone(),
            env: std::env::vars().collect::<BTreeMap<_, _>>(),
        };
        let loaded = kiln_config::load(&self.file, &opts);
        loaded.map_err(|e| {
            let _ = write!(std::io::stderr().lock(), "{e}");
            if !e.to_string().ends_with('\n') {
                let _ = writeln!(std::io::stderr().lock());
            }
            ExitCode::Config
        })
    }
}

async fn run(cli: Cli) -> ExitCode {
    let project = match Project::from_cli(&cli) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose > 0 {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    let events: Arc<dyn EventSink> = if cli.json {
        Arc::new(JsonSink::default())
    } else {
        Arc::new(HumanSink::new(verbosity))
    };
    let result = match &cli.command {
        Command::Init(args) => init::run(&project.dir, &project.file, args),
        Command::Validate(vars) => validate(&cli, &project, vars),
        Command::Plan(args) => show_plan(&cli, &project, args),
        Command::Build(args) => build(&cli, &project, args, events).await,
        Command::Gc(args) => run_gc(&cli, &project, args, events).await,
        Command::Status => run_status(&cli, &project).await,
    };
    match result {
        Ok(()) => ExitCode::Success,
        Err(code) => code,
    }
}

/// A warning for people on stderr (never on stdout, which `--json` keeps machine-readable).
fn warn(message: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "{} {message}",
        console::style("warning:").yellow().bold()
    );
}

fn stdout_line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
}

fn validate(cli: &Cli, project: &Project, vars: &VarArgs) -> Result<(), ExitCode> {
    let config = project.load(vars)?;
    if cli.json {
        stdout_line(&serde_json::json!({"valid": true, "images": config.images.len()}).to_string());
    } else if !cli.quiet {
        stdout_line(&format!(
            "{}: ok ({} image{})",
            project.file.display(),
            config.images.len(),
            if config.images.len() == 1 { "" } else { "s" }
        ));
    }
    Ok(())
}

fn make_plan(
    project: &Project,
    vars: &VarArgs,
    images: &[String],
) -> Result<(kiln_config::Config, plan::Plan), ExitCode> {
    let config = project.load(vars)?;
    let plan = plan::plan(&config, images)
        .map_err(|e| report(ExitCode::Usage, &runner::error_chain(&e), &[]))?;
    Ok((config, plan))
}

fn show_plan(cli: &Cli, project: &Project, args: &PlanArgs) -> Result<(), ExitCode> {
    let (_, plan) = make_plan(project, &args.vars, &args.images)?;
    if cli.json {
        stdout_line(&serde_json::to_string_pretty(&plan).expect("plan serialises"));
    } else {
        stdout_line(&plan.render());
    }
    Ok(())
}

/// Cancel `token` on the first SIGINT or SIGTERM; a second signal is left to the cleanup
/// already running (it is bounded), so people do not orphan a VM by pressing Ctrl-C twice.
fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = writeln!(
            std::io::stderr().lock(),
            "interrupted: stopping the current step and cleaning up…"
        );
        token.cancel();
        // Keep receiving so further signals do not fall back to the default (terminate).
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    });
}

async fn build(
    cli: &Cli,
    project: &Project,
    args: &BuildArgs,
    events: Arc<dyn EventSink>,
) -> Result<(), ExitCode> {
    // Signals are handled from here on, so that Ctrl-C while the plan hashes a big base disk
    // exits 130 like any other interrupt.
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let config = project.load(&args.vars)?;
    let planned = {
        let config = config.clone();
        let images = args.images.clone();
        tokio::task::spawn_blocking(move || plan::plan(&config, &images))
    };
    let plan = tokio::select! {
        () = cancel.cancelled() => {
            return Err(report(ExitCode::Interrupted, "interrupted while planning; nothing was started", &[]));
        }
        planned = planned => match planned {
            Ok(Ok(plan)) => plan,
            Ok(Err(e)) => return Err(report(ExitCode::Usage, &runner::error_chain(&e), &[])),
            Err(e) => return Err(report(ExitCode::Internal, &format!("plan the build: {e}"), &[])),
        },
    };
    let opts = BuildOptions {
        on_error: args.on_error,
        force: args.force,
    };
    let registry = Registry::builtin();
    match runner::build(&config, &plan, &opts, &registry, events, cancel).await {
        Ok(report) => {
            if !cli.json {
                for m in &report.manifests {
                    stdout_line(&format!(
                        "{}: {} ({}, {}, sha256 {})",
                        m.image,
                        relative(&config.root.join(&m.output.path)),
                        m.output.format,
                        human_size(m.output.size),
                        &m.output.sha256[..16.min(m.output.sha256.len())]
                    ));
                }
            }
            Ok(())
        }
        Err(BuildError::Interrupted) => Err(report(
            ExitCode::Interrupted,
            "interrupted; cleanup done",
            &[],
        )),
        Err(BuildError::StepFailed {
            image,
            step,
            message,
            details,
        }) => Err(report(
            ExitCode::Failure,
            &format!("{image}: step {step} failed: {message}"),
            &details,
        )),
        Err(e @ BuildError::OutputExists { .. }) => {
            Err(report(ExitCode::Usage, &e.to_string(), &[]))
        }
        Err(e @ BuildError::UnknownProvider(_)) => {
            Err(report(ExitCode::Usage, &e.to_string(), &[]))
        }
        Err(e @ (BuildError::Journal(_) | BuildError::Internal { .. })) => {
            Err(report(ExitCode::Internal, &runner::error_chain(&e), &[]))
        }
    }
}

fn relative(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}

fn human_size(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1.0 {
        format!("{mib:.1} MiB")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// `gc` and `status` work without a valid kiln.toml: the state directory is all they need,
/// and a broken config must not stop anyone from cleaning up.
fn state_dir(project: &Project) -> StateDir {
    StateDir::new(project.file.parent().unwrap_or(&project.dir))
}

async fn run_gc(
    cli: &Cli,
    project: &Project,
    args: &GcArgs,
    events: Arc<dyn EventSink>,
) -> Result<(), ExitCode> {
    let state = state_dir(project);
    let registry = Registry::builtin();
    let opts = GcOptions {
        dry_run: args.dry_run,
        include_kept: true,
    };
    let cancel = CancellationToken::new();
    cancel_on_signals(cancel.clone());
    let report = gc::gc(&state, &registry, opts, events.as_ref(), &cancel)
        .await
        .map_err(|e| report(ExitCode::Internal, &runner::error_chain(&e), &[]))?;
    if cli.json {
        stdout_line(&serde_json::to_string(&report).expect("report serialises"));
    } else {
        for r in &report.resources {
            stdout_line(&format!(
                "{:<14} {} {} {} (run {})",
                r.outcome,
                r.entry.resource.provider,
                r.entry.resource.kind,
                r.entry.resource.id,
                r.run_id
            ));
        }
        for run in &report.live_runs {
            stdout_line(&format!("run {run} is still in progress; left alone"));
        }
        if report.resources.is_empty() && !cli.quiet && !report.interrupted {
            stdout_line("nothing to remove");
        }
    }
    if report.interrupted {
        return Err(self::report(
            ExitCode::Interrupted,
            "interrupted; the removal in progress was finished and recorded, `kiln gc` again removes the rest",
            &[],
        ));
    }
    if report.failures() > 0 {
        return Err(ExitCode::Failure);
    }
    Ok(())
}

async fn run_status(cli: &Cli, project: &Project) -> Result<(), ExitCode> {
    let state = state_dir(project);
    let status = gc::status(&state, &Registry::builtin())
        .await
        .map_err(|e| report(ExitCode::Internal, &runner::error_chain(&e), &[]))?;
    for warning in &status.warnings {
        warn(warning);
    }
    let entries = status.resources;
    if cli.json {
        stdout_line(&serde_json::to_string(&entries).expect("status serialises"));
        return Ok(());
    }
    if entries.is_empty() {
        stdout_line("no live or leaked resources");
        return Ok(());
    }
    for e in &entries {
        let exists = match e.exists {
            Some(true) => "present",
            Some(false) => "gone",
            None => "unknown",
        };
        stdout_line(&format!(
            "{:<8} {:<8} {} {} {} (run {}{})",
            e.state,
            exists,
            e.entry.resource.provider,
            e.entry.resource.kind,
            e.entry.resource.id,
            e.run_id,
            e.entry
                .resource
                .image
                .as_ref()
                .map(|i| format!(", image {i}"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}
