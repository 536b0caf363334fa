//! The write-ahead journal of everything a run creates.
//!
//! Owns `.kiln/journal/<run-id>.jsonl` and `.kiln/runs/<run-id>.lock`. Before any resource is
//! created (a VM process, an overlay disk, a port, a key, a temp dir; later a cloud instance or
//! a remote image) a `create` record is appended and fsynced; when the resource is gone a
//! `remove` record follows. A run holds an exclusive lock on its lock file for as long as it
//! lives, so a reader can tell a live run from a dead one (crashed, killed with `kill -9`) by
//! trying the lock. This module only records and reads; removing what a record names is the
//! job of the providers (`provider::*::destroy`) driven by `gc`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// Errors reading or writing the journal. The journal is the safety net for cleanup, so a
/// write failure stops the run before it creates the resource it could not record.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("access the state directory {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A run identifier: UTC time plus randomness, sortable, safe in file names and VM names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId(String);

impl RunId {
    pub fn generate() -> RunId {
        let mut rand = [0u8; 3];
        // A failure of the OS random source leaves zeros; the timestamp still separates runs.
        let _ = getrandom::fill(&mut rand);
        let now = Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
        RunId(format!("{now}-{}", hex::encode(rand)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Accepts only what `generate` produces (it is used in paths).
    pub fn parse(s: &str) -> Option<RunId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        ok.then(|| RunId(s.to_string()))
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a resource is, with enough to find and remove it later without the run that made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// Which provider removes it: `local` (kiln's own files and dirs), `qemu`, later `aws`, …
    pub provider: String,
    /// The provider's kind: `dir`, `file`, `port`, `qemu-process`, `disk-overlay`, …
    pub kind: String,
    /// The provider's identifier (a path, a pid, an instance id).
    pub id: String,
    /// The image it belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whatever else the provider needs to find it again (region, marker, start time…).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// One journal line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// First line of every journal.
    Run {
        /// The journal format ([`JOURNAL_SCHEMA`]); absent in journals of kiln 0.1.0's first
        /// builds, which wrote schema 1.
        #[serde(default = "schema_one")]
        schema: u32,
        run_id: RunId,
        pid: u32,
        command: String,
        kiln_version: String,
        at: Timestamp,
    },
    /// Written and fsynced before the resource exists.
    Create {
        rid: u64,
        resource: Resource,
        at: Timestamp,
    },
    /// More about a resource once it exists (a pid after spawn, an instance id after launch).
    Update {
        rid: u64,
        data: serde_json::Map<String, serde_json::Value>,
    },
    /// The resource is gone.
    Remove { rid: u64, at: Timestamp },
    /// The run left this resource alive on purpose (`--on-error=abort`); only an explicit
    /// `kiln gc` removes it, not the reaping at the start of the next build.
    Keep { rid: u64 },
    /// The run finished; `status` is `succeeded`, `failed` or `interrupted`.
    End { status: String, at: Timestamp },
}

/// The journal format this kiln writes and understands. A journal of a newer schema is
/// listed but never reaped: this kiln cannot know what its records mean.
pub const JOURNAL_SCHEMA: u32 = 1;

fn schema_one() -> u32 {
    1
}

/// The `.kiln/` state directory of a project.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(project_root: &Path) -> StateDir {
        StateDir {
            root: project_root.join(".kiln"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn journal_dir(&self) -> PathBuf {
        self.root.join("journal")
    }

    fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Per-run scratch space (keys, overlays, console logs).
    pub fn run_tmp(&self, run: &RunId) -> PathBuf {
        self.root.join("tmp").join(run.as_str())
    }

    pub fn journal_path(&self, run: &RunId) -> PathBuf {
        self.journal_dir().join(format!("{run}.jsonl"))
    }

    fn lock_path(&self, run: &RunId) -> PathBuf {
        self.runs_dir().join(format!("{run}.lock"))
    }

    /// Try to become the one reaper of this state directory (`kiln gc`, or a build reaping
    /// before it starts). `Ok(None)`: another reaper holds it. `Ok(Some(None))`: there is no
    /// state directory, so nothing to reap and nothing to lock.
    pub fn try_lock_reaper(&self) -> Result<Option<Option<ReaperLock>>, JournalError> {
        if !self.root.is_dir() {
            return Ok(Some(None));
        }
        let dir = self.runs_dir();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let path = dir.join("gc.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Some(ReaperLock { _file: file }))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// Start a run: take its lock and write the journal's first record.
    pub fn begin_run(&self, command: &str) -> Result<Journal, JournalError> {
        for dir in [self.journal_dir(), self.runs_dir()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        let run_id = RunId::generate();
        let lock_path = self.lock_path(&run_id);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;
        let path = self.journal_path(&run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        sync_dir(&self.journal_dir());
        let journal = Journal {
            run_id: run_id.clone(),
            path,
            inner: Mutex::new(Inner {
                file,
                next_rid: 1,
                live: BTreeMap::new(),
            }),
            lock,
        };
        journal.append(&Record::Run {
            schema: JOURNAL_SCHEMA,
            run_id,
            pid: std::process::id(),
            command: command.to_string(),
            kiln_version: env!("CARGO_PKG_VERSION").to_string(),
            at: Timestamp::now(),
        })?;
        Ok(journal)
    }

    /// Every journal on disk, with whether its run is still alive.
    pub fn runs(&self) -> Result<Vec<RunState>, JournalError> {
        let dir = self.journal_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut runs = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let path = entry.path();
            let Some(run) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(RunId::parse)
            else {
                continue;
            };
            let alive = self.is_alive(&run)?;
            runs.push(RunState::read(run, &path, alive)?);
        }
        runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
        Ok(runs)
    }

    fn is_alive(&self, run: &RunId) -> Result<bool, JournalError> {
        let path = self.lock_path(run);
        let file = match File::open(&path) {
            Ok(f) => f,
            // No lock file: the run died before it could take one, or it was cleaned up.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        match file.try_lock() {
            Ok(()) => Ok(false),
            Err(std::fs::TryLockError::WouldBlock) => Ok(true),
            Err(std::fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
        }
    }

    /// Record that a dead run's resource is gone (written by `gc`, which does not own the
    /// run's journal but is the only writer once the run is dead).
    pub fn mark_removed(&self, run: &RunId, rid: u64) -> Result<(), JournalError> {
        let path = self.journal_path(run);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut line = record_line(&Record::Remove {
            rid,
            at: Timestamp::now(),
        });
        // After a torn last line, start a new line: glued to it, this record would be lost.
        if !ends_with_newline(&mut file).map_err(io_err(&path))? {
            line.insert(0, '\n');
        }
        file.write_all(line.as_bytes()).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))
    }

    /// Delete the journal, lock and scratch space of a dead run that has nothing left alive.
    pub fn forget(&self, run: &RunId) -> Result<(), JournalError> {
        let tmp = self.run_tmp(run);
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&tmp)(e)),
        }
        for path in [self.journal_path(run), self.lock_path(run)] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        Ok(())
    }
}

/// Held by the one process reaping a state directory; released on drop.
#[derive(Debug)]
pub struct ReaperLock {
    _file: File,
}

/// A resource as the journal knows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub rid: u64,
    pub resource: Resource,
    pub created: Timestamp,
    /// Left alive on purpose by `--on-error=abort`.
    pub kept: bool,
}

/// The state of one run, folded from its journal.
#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub run_id: RunId,
    pub command: Option<String>,
    pub pid: Option<u32>,
    pub started: Option<Timestamp>,
    /// `succeeded`, `failed`, `interrupted`, or `None` when the run never wrote its end.
    pub status: Option<String>,
    /// Whether the run's process still holds its lock.
    pub alive: bool,
    /// Resources created and not removed, in creation order.
    pub live: Vec<Entry>,
    /// Lines that could not be read, each as `file line N: why`. They are skipped; the rest
    /// of the journal still counts.
    pub damaged: Vec<String>,
    /// Whether the damage is more than torn records. A torn record is one whose write never
    /// finished, so what it was about to announce was never created; anything else may have
    /// named a live resource, so such a journal is kept for people to look at even when
    /// everything it still names is gone.
    pub damaged_beyond_tail: bool,
    /// `Some(schema)` when a newer kiln wrote this journal: it is listed, never reaped.
    pub newer_schema: Option<u32>,
}

impl RunState {
    fn read(run_id: RunId, path: &Path, alive: bool) -> Result<RunState, JournalError> {
        let bytes = fs::read(path).map_err(io_err(path))?;
        let mut state = RunState {
            run_id,
            command: None,
            pid: None,
            started: None,
            status: None,
            alive,
            live: Vec::new(),
            damaged: Vec::new(),
            damaged_beyond_tail: false,
            newer_schema: None,
        };
        let mut live: BTreeMap<u64, Entry> = BTreeMap::new();
        // Split on the newline byte ourselves: a torn line may also be torn UTF-8.
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        if bytes.ends_with(b"\n") {
            lines.pop(); // the empty piece after the final newline
        }
        for (i, line) in lines.iter().enumerate() {
            let number = i + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let record = match parse_record(line) {
                Ok(record) => record,
                Err(damage) => {
                    state.damaged.push(format!(
                        "{} line {number}: {}{}",
                        path.display(),
                        damage.why,
                        if damage.torn {
                            " (a torn record: its write never finished, so what it announced \
                             was never created)"
                        } else {
                            ""
                        }
                    ));
                    if !damage.torn {
                        state.damaged_beyond_tail = true;
                    }
                    continue;
                }
            };
            match record {
                Record::Run {
                    schema,
                    pid,
                    command,
                    at,
                    ..
                } => {
                    if schema > JOURNAL_SCHEMA {
                        state.newer_schema = Some(schema);
                    }
                    state.pid = Some(pid);
                    state.command = Some(command);
                    state.started = Some(at);
                }
                Record::Create { rid, resource, at } => {
                    live.insert(
                        rid,
                        Entry {
                            rid,
                            resource,
                            created: at,
                            kept: false,
                        },
                    );
                }
                Record::Update { rid, data } => {
                    if let Some(entry) = live.get_mut(&rid) {
                        entry.resource.data.extend(data);
                    }
                }
                Record::Remove { rid, .. } => {
                    live.remove(&rid);
                }
                Record::Keep { rid } => {
                    if let Some(entry) = live.get_mut(&rid) {
                        entry.kept = true;
                    }
                }
                Record::End { status, .. } => state.status = Some(status),
            }
        }
        state.live = live.into_values().collect();
        Ok(state)
    }
}

/// Why a journal line is not a record.
#[derive(Debug)]
struct Damage {
    why: String,
    /// The line is the beginning of a record whose write never finished (a crash or a full
    /// disk mid-write). Records are written before what they announce is created, so such a
    /// record announced nothing that exists; any other damage may hide a live resource.
    torn: bool,
}

/// One journal line as a record, or why it is not one.
fn parse_record(line: &[u8]) -> Result<Record, Damage> {
    let damage = |why: String, torn: bool| Damage { why, torn };
    let value: serde_json::Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) if e.is_eof() && line.first() == Some(&b'{') => {
            return Err(damage(
                "the line ends in the middle of a record".into(),
                true,
            ));
        }
        Err(_) => return Err(damage("not a JSON record".into(), false)),
    };
    let op = value
        .get("op")
        .and_then(|op| op.as_str())
        .map(str::to_string);
    serde_json::from_value(value).map_err(|e| match op {
        Some(op) if !KNOWN_OPS.contains(&op.as_str()) => damage(
            format!("unknown record kind `{op}` (written by a newer kiln?)"),
            false,
        ),
        Some(op) => damage(format!("malformed `{op}` record: {e}"), false),
        None => damage("a JSON value without an `op`".into(), false),
    })
}

const KNOWN_OPS: &[&str] = &["run", "create", "update", "remove", "keep", "end"];

#[derive(Debug)]
struct Inner {
    file: File,
    next_rid: u64,
    live: BTreeMap<u64, Resource>,
}

/// The journal of the current run. Cheap to share by reference; appends are serialised.
#[derive(Debug)]
pub struct Journal {
    run_id: RunId,
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Held for the life of the run: the lock is how `gc` tells live runs from dead ones.
    lock: File,
}

impl Journal {
    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, record: &Record) -> Result<(), JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        Self::append_locked(&mut inner, &self.path, record)
    }

    fn append_locked(inner: &mut Inner, path: &Path, record: &Record) -> Result<(), JournalError> {
        inner
            .file
            .write_all(record_line(record).as_bytes())
            .map_err(io_err(path))?;
        inner.file.sync_data().map_err(io_err(path))
    }

    /// Record a resource that is about to be created. Returns its record id.
    pub fn create(&self, resource: Resource) -> Result<u64, JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        let rid = inner.next_rid;
        inner.next_rid += 1;
        let record = Record::Create {
            rid,
            resource: resource.clone(),
            at: Timestamp::now(),
        };
        Self::append_locked(&mut inner, &self.path, &record)?;
        inner.live.insert(rid, resource);
        Ok(rid)
    }

    /// Add what became known after creation (a pid, an instance id).
    pub fn update(
        &self,
        rid: u64,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        if let Some(resource) = inner.live.get_mut(&rid) {
            resource.data.extend(data.clone());
        }
        Self::append_locked(&mut inner, &self.path, &Record::Update { rid, data })
    }

    pub fn remove(&self, rid: u64) -> Result<(), JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        inner.live.remove(&rid);
        let record = Record::Remove {
            rid,
            at: Timestamp::now(),
        };
        Self::append_locked(&mut inner, &self.path, &record)
    }

    /// Leave every live resource for an explicit `kiln gc` (see [`Record::Keep`]).
    pub fn keep_all(&self) -> Result<Vec<Resource>, JournalError> {
        let mut inner = self.inner.lock().expect("journal lock poisoned");
        let live: Vec<(u64, Resource)> = inner.live.iter().map(|(k, v)| (*k, v.clone())).collect();
        for (rid, _) in &live {
            Self::append_locked(&mut inner, &self.path, &Record::Keep { rid: *rid })?;
        }
        Ok(live.into_iter().map(|(_, r)| r).collect())
    }

    /// Resources created and not yet removed.
    pub fn live(&self) -> Vec<(u64, Resource)> {
        let inner = self.inner.lock().expect("journal lock poisoned");
        inner.live.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Write the end record and release the run's lock: from here on the run reads as dead,
    /// which it is. When nothing is left alive the journal and lock are deleted: there is
    /// nothing for `gc` to do, and `.kiln/` stays small.
    pub fn finish(&self, state: &StateDir, status: &str) -> Result<(), JournalError> {
        self.append(&Record::End {
            status: status.to_string(),
            at: Timestamp::now(),
        })?;
        let lock_path = state.lock_path(&self.run_id);
        self.lock.unlock().map_err(io_err(&lock_path))?;
        if self.live().is_empty() {
            state.forget(&self.run_id)?;
        }
        Ok(())
    }
}

fn ends_with_newline(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// A record as one complete line. Written with a single `write` to an `O_APPEND` file, so a
/// crash or a full disk tears at most the line being written, never one already there.
fn record_line(record: &Record) -> String {
    let mut line = serde_json::to_string(record).expect("records serialise");
    line.push('\n');
    line
}

fn sync_dir(dir: &Path) {
    // Makes the new journal's directory entry durable; failure only weakens crash safety on
    // exotic filesystems, so it is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(kind: &str, id: &str) -> Resource {
        Resource {
            provider: "local".into(),
            kind: kind.into(),
            id: id.into(),
            image: Some("tiny".into()),
            data: Default::default(),
        }
    }

    #[test]
    fn live_run_is_seen_alive_and_its_resources_listed() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let journal = state.begin_run("build").unwrap();
        let a = journal.create(res("dir", "/a")).unwrap();
        let b = journal.create(res("file", "/b")).unwrap();
        let mut data = serde_json::Map::new();
        data.insert("pid".into(), 42.into());
        journal.update(b, data).unwrap();
        journal.remove(a).unwrap();

        let runs = state.runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert!(runs[0].alive);
        assert_eq!(runs[0].live.len(), 1);
        assert_eq!(runs[0].live[0].resource.id, "/b");
        assert_eq!(runs[0].live[0].resource.data["pid"], 42);

        drop(journal);
        let runs = state.runs().unwrap();
        assert!(!runs[0].alive, "a dropped journal releases its lock");
        assert_eq!(runs[0].status, None);
    }

    #[test]
    fn finished_clean_run_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let journal = state.begin_run("build").unwrap();
        let a = journal.create(res("dir", "/a")).unwrap();
        journal.remove(a).unwrap();
        journal.finish(&state, "succeeded").unwrap();
        assert!(state.runs().unwrap().is_empty());
    }

    #[test]
    fn kept_and_torn_records() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let journal = state.begin_run("build").unwrap();
        journal.create(res("dir", "/a")).unwrap();
        journal.keep_all().unwrap();
        let path = journal.path().to_path_buf();
        journal.finish(&state, "failed").unwrap();
        // A torn last line (kill -9 mid-write) is ignored.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"op\":\"remo").unwrap();
        let runs = state.runs().unwrap();
        assert_eq!(runs[0].status.as_deref(), Some("failed"));
        assert!(runs[0].live[0].kept);
    }

    /// A journal with one live resource, released (its run reads as dead), and its path.
    fn dead_run_with_one_resource(state: &StateDir) -> PathBuf {
        let journal = state.begin_run("build").unwrap();
        journal.create(res("dir", "/a")).unwrap();
        let path = journal.path().to_path_buf();
        drop(journal);
        path
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[test]
    fn torn_last_line_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dead_run_with_one_resource(&state);
        append(&path, b"{\"op\":\"create\",\"rid\":2,\"reso");
        let runs = state.runs().unwrap();
        assert_eq!(runs[0].live.len(), 1, "the intact create still counts");
        assert_eq!(
            runs[0].damaged,
            vec![format!(
                "{} line 3: the line ends in the middle of a record (a torn record: its write \
                 never finished, so what it announced was never created)",
                path.display()
            )]
        );
        assert!(!runs[0].damaged_beyond_tail);
        // gc's remove record after a torn line starts a line of its own and counts.
        state.mark_removed(&runs[0].run_id, 1).unwrap();
        let runs = state.runs().unwrap();
        assert!(runs[0].live.is_empty());
        assert_eq!(runs[0].damaged.len(), 1);
        assert!(!runs[0].damaged_beyond_tail);
    }

    #[test]
    fn garbage_in_the_middle_is_reported_and_the_rest_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dead_run_with_one_resource(&state);
        // Garbage (with invalid UTF-8), then a record after it that must still count.
        append(&path, b"\xff\xfegarbage\n{\"op\":\"keep\",\"rid\":1}\n");
        let runs = state.runs().unwrap();
        assert_eq!(
            runs[0].damaged,
            vec![format!("{} line 3: not a JSON record", path.display())]
        );
        assert!(runs[0].damaged_beyond_tail);
        assert!(
            runs[0].live[0].kept,
            "the record after the garbage was read"
        );
    }

    #[test]
    fn unknown_record_kind_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dead_run_with_one_resource(&state);
        append(
            &path,
            b"{\"op\":\"snapshot\",\"rid\":9}\n{\"op\":\"remove\"}\n",
        );
        let runs = state.runs().unwrap();
        assert_eq!(
            runs[0].damaged,
            vec![
                format!(
                    "{} line 3: unknown record kind `snapshot` (written by a newer kiln?)",
                    path.display()
                ),
                format!(
                    "{} line 4: malformed `remove` record: missing field `rid`",
                    path.display()
                ),
            ]
        );
        assert_eq!(runs[0].live.len(), 1);
    }

    #[test]
    fn newer_schema_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let path = dead_run_with_one_resource(&state);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"schema\":1", "\"schema\":7", 1)).unwrap();
        let runs = state.runs().unwrap();
        assert_eq!(runs[0].newer_schema, Some(7));
        assert!(runs[0].damaged.is_empty());
    }

    #[test]
    fn every_record_is_one_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let journal = state.begin_run("build").unwrap();
        let rid = journal.create(res("dir", "/a")).unwrap();
        drop(journal);
        let run = state.runs().unwrap().remove(0).run_id;
        state.mark_removed(&run, rid).unwrap();
        let text = std::fs::read_to_string(state.journal_path(&run)).unwrap();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            parse_record(line.as_bytes()).unwrap();
        }
        assert!(state.runs().unwrap()[0].live.is_empty());
    }

    #[test]
    fn one_reaper_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(
            matches!(state.try_lock_reaper(), Ok(Some(None))),
            "no .kiln yet"
        );
        let _journal = state.begin_run("build").unwrap();
        let first = state.try_lock_reaper().unwrap().unwrap();
        assert!(first.is_some());
        assert!(
            state.try_lock_reaper().unwrap().is_none(),
            "held by the first"
        );
        drop(first);
        assert!(state.try_lock_reaper().unwrap().unwrap().is_some());
    }
}
