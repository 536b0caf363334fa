//! Reaping what runs left behind, and reporting what is alive.
//!
//! Owns the policy over the journal: which runs are dead (their lock is free), which of their
//! resources still need removing, in which order (newest first, the reverse of creation), and
//! when a run's journal can be forgotten. Removal itself is the providers' `destroy`. Runs that
//! are still alive are never touched. Resources kept on purpose (`--on-error=abort`) are
//! removed by an explicit `kiln gc` but not by the automatic reaping at the start of a build.

use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventSink};
use crate::journal::{Entry, JOURNAL_SCHEMA, JournalError, ReaperLock, RunId, StateDir};
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
    /// Damaged journal lines (skipped) and journals left alone, for people to look at.
    pub warnings: Vec<String>,
    /// A SIGINT/SIGTERM stopped the reaping between two removals.
    pub interrupted: bool,
}

impl GcReport {
    pub fn failures(&self) -> usize {
        self.resources
            .iter()
            .filter(|r| r.outcome.starts_with("failed"))
            .count()
    }
}

/// Wait until this process is the only reaper of `state` (another `kiln gc`, or a build
/// reaping before it starts, may hold the lock). `None` when interrupted while waiting.
async fn reaper_lock(
    state: &StateDir,
    events: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<Option<Option<ReaperLock>>, JournalError> {
    let mut said = false;
    loop {
        if let Some(lock) = state.try_lock_reaper()? {
            return Ok(Some(lock));
        }
        if !said {
            events.emit(Event::Note {
                image: None,
                message: "waiting for another kiln that is removing leftovers here".into(),
            });
            said = true;
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(None),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Remove what dead runs left. One reaper at a time per state directory; a cancelled gc
/// finishes the removal in progress, records it, and stops.
pub async fn gc(
    state: &StateDir,
    registry: &Registry,
    opts: GcOptions,
    events: &dyn EventSink,
    cancel: &CancellationToken,
) -> Result<GcReport, JournalError> {
    let mut report = GcReport::default();
    // Held until the end of this function; a dry run changes nothing and needs no lock.
    let _lock = if opts.dry_run {
        None
    } else {
        match reaper_lock(state, events, cancel).await? {
            Some(lock) => lock,
            None => {
                report.interrupted = true;
                return Ok(report);
            }
        }
    };
    for run in state.runs()? {
        if run.alive {
            report.live_runs.push(run.run_id.clone());
            continue;
        }
        for damage in &run.damaged {
            let warning = format!("skipped a damaged journal line: {damage}");
            events.emit(Event::Note {
                image: None,
                message: warning.clone(),
            });
            report.warnings.push(warning);
        }
        if let Some(schema) = run.newer_schema {
            let warning = format!(
                "run {} was journaled by a newer kiln (journal schema {schema}; this kiln \
                 understands {JOURNAL_SCHEMA}): left alone, run `kiln gc` with that version",
                run.run_id
            );
            events.emit(Event::Note {
                image: None,
                message: warning.clone(),
            });
            report.warnings.push(warning);
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
            } else if cancel.is_cancelled() {
                left += 1;
                report.interrupted = true;
                "interrupted".to_string()
            } else {
                match registry.get(&entry.resource.provider) {
                    None => {
                        left += 1;
                        format!(
                            "failed: provider `{}` is not available in this build of kiln",
                            entry.resource.provider
                        )
                    }
                    // Not raced against `cancel`: a removal stopped half way (a QEMU sent
                    // SIGTERM but not yet gone) would be recorded as neither done nor not.
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
            if run.damaged_beyond_tail {
                let warning = format!(
                    "kept the journal of run {} for inspection: a damaged line may have named \
                     a resource; delete {} once you are sure nothing of it is left",
                    run.run_id,
                    state.journal_path(&run.run_id).display()
                );
                events.emit(Event::Note {
                    image: None,
                    message: warning.clone(),
                });
                report.warnings.push(warning);
            } else {
                state.forget(&run.run_id)?;
            }
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
    cancel: &CancellationToken,
) -> Result<(), JournalError> {
    let report = gc(state, registry, GcOptions::default(), events, cancel).await?;
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

/// What `kiln status` shows: every live resource, and what could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusReport {
    pub resources: Vec<StatusEntry>,
    /// Damaged journal lines and journals of a newer kiln.
    pub warnings: Vec<String>,
}

pub async fn status(state: &StateDir, registry: &Registry) -> Result<StatusReport, JournalError> {
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for run in state.runs()? {
        warnings.extend(
            run.damaged
                .iter()
                .map(|d| format!("skipped a damaged journal line: {d}")),
        );
        if let Some(schema) = run.newer_schema {
            warnings.push(format!(
                "run {} was journaled by a newer kiln (journal schema {schema}; this kiln \
                 understands {JOURNAL_SCHEMA}); what it lists may be incomplete",
                run.run_id
            ));
        }
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
    Ok(StatusReport {
        resources: out,
        warnings,
    })
}
