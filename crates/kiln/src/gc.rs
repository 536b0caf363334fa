//! Reaping what runs left behind, and reporting what is alive.
//!
//! Owns the policy over the journal: which runs are dead (their lock is free), which of their
//! resources still need removing, in which order (newest first, the reverse of creation), and
//! when a run's journal can be forgotten. Removal itself is the providers' `destroy`. Runs that
//! are still alive are never touched. Resources kept on purpose (`--on-error=abort`) are
//! removed by an explicit `kiln gc` but not by the automatic reaping at the start of a build.

use serde::Serialize;

use crate::events::{Event, EventSink};
use crate::journal::{Entry, JournalError, RunId, StateDir};
use crate::provider::Registry;
use crate::runner::error_chain;

#[derive(Debug, Clone, Copy, Default)]
pub struct GcOptions {
    /// List what would be removed; change nothing.
    pub dry_run: bool,
    /// Also remove what `--on-error=abort` kept.
    pub include_kept: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reaped {
    pub run_id: RunId,
    #[serde(flatten)]
    pub entry: Entry,
    /// `removed`, `would remove`, `kept`, or `failed: …`
    pub outcome: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub resources: Vec<Reaped>,
    /// Runs still in progress, left alone.
    pub live_runs: Vec<RunId>,
}

impl GcReport {
    pub fn failures(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.outcome.starts_with("failed"))
            .count()
    }
}

pub async fn gc(
    state: &StateDir,
    registry: &Registry,
    opts: GcOptions,
    events: &dyn EventSink,
) -> Result<GcReport, JournalError> {
    let mut report = GcReport::default();
    for run in state.runs()? {
        if run.alive {
            report.live_runs.push(run.run_id.clone());
            continue;
        }
        let mut left = 0;
        for entry in run.live.iter().rev() {
            let outcome = if entry.kept && !opts.include_kept {
                left += 1;
                "kept".to_string()
            } else if opts.dry_run {
                left += 1;
                "would remove".to_string()
            } else {
                match registry.get(&entry.resource.provider) {
                    None => {
                        left += 1;
                        format!(
                            "failed: provider `{}` is not available in this build of kiln",
                            entry.resource.provider
                        )
                    }
                    Some(provider) => match provider.destroy(&entry.resource).await {
                        Ok(()) => {
                            state.mark_removed(&run.run_id, entry.rid)?;
                            events.emit(Event::ResourceRemoved {
                                image: entry.resource.image.clone(),
                                provider: entry.resource.provider.clone(),
                                kind: entry.resource.kind.clone(),
                                id: entry.resource.id.clone(),
                            });
                            "removed".to_string()
                        }
                        Err(e) => {
                            left += 1;
                            format!("failed: {}", error_chain(&e))
                        }
                    },
                }
            };
            report.resources.push(Reaped {
                run_id: run.run_id.clone(),
                entry: entry.clone(),
                outcome,
            });
        }
        if left == 0 && !opts.dry_run {
            state.forget(&run.run_id)?;
        }
    }
    Ok(report)
}

/// The reaping `kiln build` does before it starts: dead runs only, kept resources left alone
/// (but mentioned).
pub async fn reap_stale(
    state: &StateDir,
    registry: &Registry,
    events: &dyn EventSink,
) -> Result<(), JournalError> {
    let report = gc(state, registry, GcOptions::default(), events).await?;
    let removed = report
        .resources
        .iter()
        .filter(|r| r.outcome == "removed")
        .count();
    if removed > 0 {
        events.emit(Event::Note {
            image: None,
            message: format!("removed {removed} resource(s) left by earlier runs"),
        });
    }
    let kept = report
        .resources
        .iter()
        .filter(|r| r.outcome == "kept")
        .count();
    if kept > 0 {
        events.emit(Event::Note {
            image: None,
            message: format!(
                "{kept} resource(s) kept by an earlier --on-error=abort are still there; `kiln gc` removes them"
            ),
        });
    }
    for r in report
        .resources
        .iter()
        .filter(|r| r.outcome.starts_with("failed"))
    {
        events.emit(Event::Note {
            image: r.entry.resource.image.clone(),
            message: format!(
                "could not remove {} {} of run {}: {}",
                r.entry.resource.kind, r.entry.resource.id, r.run_id, r.outcome
            ),
        });
    }
    Ok(())
}

/// One line of `kiln status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusEntry {
    pub run_id: RunId,
    /// `running` (its kiln is alive), `kept`, or `leaked`.
    pub state: String,
    #[serde(flatten)]
    pub entry: Entry,
    /// Whether the provider still sees it.
    pub exists: Option<bool>,
}

pub async fn status(
    state: &StateDir,
    registry: &Registry,
) -> Result<Vec<StatusEntry>, JournalError> {
    let mut out = Vec::new();
    for run in state.runs()? {
        for entry in &run.live {
            let exists = match registry.get(&entry.resource.provider) {
                Some(p) => p.exists(&entry.resource).await.ok(),
                None => None,
            };
            let state = if run.alive {
                "running"
            } else if entry.kept {
                "kept"
            } else {
                "leaked"
            };
            out.push(StatusEntry {
                run_id: run.run_id.clone(),
                state: state.into(),
                entry: entry.clone(),
                exists,
            });
        }
    }
    Ok(out)
}
