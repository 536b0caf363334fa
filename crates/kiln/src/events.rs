//! What a run reports while it works: step, resource, output and artifact events.
//!
//! The runner and providers emit [`Event`]s into an [`EventSink`]; the CLI decides how to show
//! them (progress lines for people, one JSON object per line with `--json`). This module owns
//! the event vocabulary and its JSON shape (documented in docs/events.md); it must not format
//! anything for people.

use std::path::PathBuf;
use std::sync::Mutex;

use jiff::Timestamp;
use serde::Serialize;

/// Which guest stream a line of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One thing that happened. Serialised with `"event": "<snake_case variant>"`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        command: String,
        images: Vec<String>,
    },
    StepStarted {
        image: String,
        step: String,
        name: String,
    },
    StepFinished {
        image: String,
        step: String,
        duration_s: f64,
    },
    StepFailed {
        image: String,
        step: String,
        duration_s: f64,
        error: String,
    },
    /// A line the guest printed during a step.
    Output {
        image: String,
        step: String,
        stream: Stream,
        line: String,
    },
    /// Something worth a line that is not a step (the accelerator chosen, a retry, a reap).
    Note {
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        message: String,
    },
    ResourceCreated {
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        provider: String,
        kind: String,
        id: String,
    },
    ResourceRemoved {
        #[serde(skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        provider: String,
        kind: String,
        id: String,
    },
    ArtifactWritten {
        image: String,
        path: PathBuf,
        format: String,
        size: u64,
        sha256: String,
    },
    RunFinished {
        run_id: String,
        status: String,
        duration_s: f64,
    },
}

/// An event with the time it happened, as written to `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped<'a> {
    pub ts: Timestamp,
    #[serde(flatten)]
    pub event: &'a Event,
}

/// Where events go. Implementations must be cheap: they are called from step loops.
pub trait EventSink: Send + Sync + std::fmt::Debug {
    fn emit(&self, event: Event);
}

/// Keeps events in memory (tests, and the library's own callers).
#[derive(Debug, Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("recorder poisoned").clone()
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: Event) {
        self.events.lock().expect("recorder poisoned").push(event);
    }
}
