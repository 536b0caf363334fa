//! How events reach the terminal: progress for people, JSON lines for machines.
//!
//! Owns presentation only. People get one line per step on stderr (a live spinner with the
//! elapsed time when stderr is a terminal, plain lines otherwise), guest output prefixed with
//! image and step, and colour only on a terminal without `NO_COLOR`. `--json` writes one event
//! object per line to stdout and nothing else there.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use console::style;
use indicatif::{ProgressBar, ProgressStyle};

use crate::events::{Event, EventSink, Stamped, Stream};

/// How much people see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Decide colour once, for stderr and stdout alike.
pub(crate) fn init_colors() -> bool {
    let enabled = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stderr().is_terminal()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
    console::set_colors_enabled(enabled);
    console::set_colors_enabled_stderr(enabled);
    enabled
}

/// One JSON object per line on stdout.
#[derive(Debug, Default)]
pub(crate) struct JsonSink {
    lock: Mutex<()>,
}

impl EventSink for JsonSink {
    fn emit(&self, event: Event) {
        let stamped = Stamped {
            ts: jiff::Timestamp::now(),
            event: &event,
        };
        let line = serde_json::to_string(&stamped).expect("events serialise");
        let _guard = self.lock.lock().expect("json sink poisoned");
        let mut out = std::io::stdout().lock();
        // A closed stdout (`| head`) must not crash a build that is cleaning up.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Progress for people on stderr.
#[derive(Debug)]
pub(crate) struct HumanSink {
    verbosity: Verbosity,
    bar: Mutex<Option<ProgressBar>>,
    tty: bool,
}

impl HumanSink {
    pub(crate) fn new(verbosity: Verbosity) -> HumanSink {
        HumanSink {
            verbosity,
            bar: Mutex::new(None),
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn line(&self, text: &str) {
        let bar = self.bar.lock().expect("progress poisoned");
        match bar.as_ref() {
            Some(bar) => bar.println(text),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

impl HumanSink {
    /// End the current step: replace the spinner with a status line on a TTY, or print
    /// `plain` (if any) otherwise.
    fn finish_step(
        &self,
        mark: console::StyledObject<&str>,
        duration_s: f64,
        error: &str,
        plain: Option<String>,
    ) {
        // Take the bar out first: `line` locks the same mutex.
        let bar = self.bar.lock().expect("progress poisoned").take();
        match (bar, plain) {
            (Some(bar), _) => {
                // Keep the step's title, drop the spinner and the ticking clock.
                let title = bar.message();
                bar.set_style(ProgressStyle::with_template("{msg}").expect("valid template"));
                let line = format!(
                    "{mark} {title} {} {error}",
                    style(format!("({duration_s:.1}s)")).dim()
                );
                bar.finish_with_message(line.trim_end().to_string());
            }
            (None, Some(plain)) => self.line(&plain),
            (None, None) => {}
        }
    }
}

impl EventSink for HumanSink {
    fn emit(&self, event: Event) {
        if self.verbosity == Verbosity::Quiet {
            return;
        }
        match event {
            Event::RunStarted { run_id, images, .. } => self.line(&format!(
                "{} run {run_id}: {}",
                style("kiln").bold(),
                images.join(", ")
            )),
            Event::StepStarted { image, step, name } => {
                if self.tty {
                    let bar = ProgressBar::new_spinner();
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed:.dim}")
                            .expect("valid template"),
                    );
                    bar.set_message(format!(
                        "{} {} {}",
                        style(&image).cyan(),
                        style(&step).bold(),
                        name
                    ));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    *self.bar.lock().expect("progress poisoned") = Some(bar);
                } else {
                    self.line(&format!("==> {image}: {step}: {name}"));
                }
            }
            Event::StepFinished {
                image,
                step,
                duration_s,
            } => {
                let plain = (self.verbosity == Verbosity::Verbose)
                    .then(|| format!("    {image}: {step}: done in {duration_s:.2}s"));
                self.finish_step(style("✓").green(), duration_s, "", plain);
            }
            Event::StepFailed {
                image,
                step,
                duration_s,
                error,
            } => {
                let plain = format!("    {image}: {step}: failed after {duration_s:.1}s: {error}");
                self.finish_step(style("✗").red(), duration_s, &error, Some(plain));
            }
            Event::Output {
                image,
                step,
                stream,
                line,
            } => {
                let prefix = format!("    {image} {step} |");
                let text = match stream {
                    Stream::Stdout => format!("{} {line}", style(prefix).dim()),
                    Stream::Stderr => format!("{} {}", style(prefix).dim(), style(line).yellow()),
                };
                self.line(&text);
            }
            Event::Note { image, message } => {
                let text = match image {
                    Some(image) => format!("    {image}: {message}"),
                    None => format!("    {message}"),
                };
                self.line(&style(text).dim().to_string());
            }
            Event::ResourceCreated {
                provider, kind, id, ..
            } if self.verbosity == Verbosity::Verbose => {
                self.line(&format!("    + {provider} {kind} {id}"));
            }
            Event::ResourceRemoved {
                provider, kind, id, ..
            } if self.verbosity == Verbosity::Verbose => {
                self.line(&format!("    - {provider} {kind} {id}"));
            }
            Event::ResourceCreated { .. } | Event::ResourceRemoved { .. } => {}
            Event::ArtifactWritten { .. } | Event::RunFinished { .. } => {}
        }
    }
}
