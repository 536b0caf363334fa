//! Diagnostics: what went wrong, where, and how it is shown.
//!
//! Owns [`Diagnostic`] (one problem, with its file, line, column, key path and help),
//! [`ConfigError`] (everything found in one load) and the rustc-like text rendering. It knows
//! nothing about the configuration's schema; messages are written by the modules that find the
//! problems. Rendering is plain text, without colour, and deterministic, so that it can be
//! asserted whole in tests.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A text the diagnostics point into: `kiln.toml` itself or a `--var-file`.
#[derive(Debug, Clone)]
pub(crate) struct SourceFile {
    /// As given by the caller, so that a relative path stays relative in messages.
    display_path: PathBuf,
    text: Arc<str>,
    /// Orders diagnostics of different files: the config is 0, var files follow.
    rank: usize,
}

impl SourceFile {
    pub(crate) fn new(display_path: &Path, text: &str, rank: usize) -> Self {
        SourceFile {
            display_path: display_path.to_path_buf(),
            text: Arc::from(text),
            rank,
        }
    }

    pub(crate) fn display_path(&self) -> &Path {
        &self.display_path
    }

    /// A diagnostic pointing at `span` (byte offsets into the text).
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> Diagnostic {
        let start = floor_char_boundary(&self.text, span.start.min(self.text.len()));
        let end = floor_char_boundary(&self.text, span.end.clamp(start, self.text.len()));
        let line_start = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = self.text[start..]
            .find('\n')
            .map_or(self.text.len(), |i| start + i);
        let line_text = self.text[line_start..line_end].trim_end_matches('\r');
        let line = self.text[..start].matches('\n').count() + 1;
        let column = self.text[line_start..start].chars().count() + 1;
        // Carets cover the span on its first line; at least one, even for an empty span.
        let caret_end = end.min(line_start + line_text.len()).max(start);
        let prefix = expand_tabs(&self.text[line_start..start.min(line_start + line_text.len())]);
        let marked = expand_tabs(&self.text[start..caret_end]);
        Diagnostic {
            message: message.into(),
            path: Some(self.display_path.clone()),
            location: Some(Location {
                line,
                column,
                line_text: expand_tabs(line_text),
                caret_offset: prefix.chars().count(),
                caret_len: marked.chars().count().max(1),
            }),
            key_path: None,
            help: None,
            note: None,
            order: (self.rank, start),
        }
    }

    /// A diagnostic about the whole file, without a line (e.g. a missing top-level table).
    pub(crate) fn file_error(&self, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            message: message.into(),
            path: Some(self.display_path.clone()),
            location: None,
            key_path: None,
            help: None,
            note: None,
            order: (self.rank, usize::MAX),
        }
    }

    /// `path:line:column` of a byte offset, for notes that refer to another place.
    pub(crate) fn position(&self, offset: usize) -> String {
        let d = self.error(offset..offset, "");
        let loc = d.location.expect("error() always sets a location");
        format!(
            "{}:{}:{}",
            self.display_path.display(),
            loc.line,
            loc.column
        )
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn expand_tabs(s: &str) -> String {
    s.replace('\t', "    ")
}

/// Where in a file a diagnostic points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    line: usize,
    column: usize,
    line_text: String,
    caret_offset: usize,
    caret_len: usize,
}

/// One problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    message: String,
    path: Option<PathBuf>,
    location: Option<Location>,
    key_path: Option<String>,
    help: Option<String>,
    note: Option<String>,
    /// (file rank, byte offset): diagnostics are reported in file order.
    order: (usize, usize),
}

impl Diagnostic {
    /// A diagnostic that belongs to no file (e.g. about a `--var` argument).
    pub(crate) fn without_file(message: impl Into<String>, rank: usize) -> Self {
        Diagnostic {
            message: message.into(),
            path: None,
            location: None,
            key_path: None,
            help: None,
            note: None,
            order: (rank, usize::MAX),
        }
    }

    pub(crate) fn with_key(mut self, key_path: impl Into<String>) -> Self {
        let key_path = key_path.into();
        self.key_path = (!key_path.is_empty()).then_some(key_path);
        self
    }

    pub(crate) fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub(crate) fn with_opt_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    pub(crate) fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    /// What went wrong, one line, lowercase (e.g. ``unknown key `nmae` in `image[0]` ``).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The file, as the caller named it; `None` for problems with command-line `--var`s.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// 1-based line, when the problem has a place in the file.
    pub fn line(&self) -> Option<usize> {
        self.location.as_ref().map(|l| l.line)
    }

    /// 1-based column in characters, when the problem has a place in the file.
    pub fn column(&self) -> Option<usize> {
        self.location.as_ref().map(|l| l.column)
    }

    /// Where in the configuration, e.g. `image[0].source.qemu.memory`.
    pub fn key_path(&self) -> Option<&str> {
        self.key_path.as_deref()
    }

    /// How to fix it, e.g. ``did you mean `name`?``.
    pub fn help(&self) -> Option<&str> {
        self.help.as_deref()
    }

    /// More context, e.g. where a duplicate was first defined.
    pub fn note(&self) -> Option<&str> {
        self.note.as_deref()
    }

    pub(crate) fn order(&self) -> (usize, usize) {
        self.order
    }
}

/// Renders like rustc: the message, ` --> file:line:column`, the line with carets, then
/// `= note:` / `= help:` lines. No trailing newline.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.message)?;
        let gutter = self
            .location
            .as_ref()
            .map_or(1, |l| l.line.to_string().len());
        let pad = " ".repeat(gutter);
        match (&self.path, &self.location) {
            (Some(path), Some(loc)) => {
                write!(
                    f,
                    "\n{pad}--> {}:{}:{}",
                    path.display(),
                    loc.line,
                    loc.column
                )?;
                write!(f, "\n{pad} |")?;
                write!(f, "\n{} | {}", loc.line, loc.line_text)?;
                write!(
                    f,
                    "\n{pad} | {}{}",
                    " ".repeat(loc.caret_offset),
                    "^".repeat(loc.caret_len)
                )?;
            }
            (Some(path), None) => write!(f, "\n{pad}--> {}", path.display())?,
            (None, _) => {}
        }
        if let Some(note) = &self.note {
            write!(f, "\n{pad} = note: {note}")?;
        }
        if let Some(help) = &self.help {
            write!(f, "\n{pad} = help: {help}")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be loaded. `Display` renders every diagnostic, separated by
/// blank lines, and is complete on its own: callers print it and need not walk `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("{diagnostic}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        diagnostic: Box<Diagnostic>,
    },
    /// The file was read, but is not a valid configuration.
    #[error("{}", Rendered(diagnostics))]
    Invalid {
        /// The configuration file, as the caller named it.
        path: PathBuf,
        /// At least one; in file order.
        diagnostics: Vec<Diagnostic>,
    },
}

impl ConfigError {
    /// Every problem found, in file order (a read error is a single diagnostic).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Read { diagnostic, .. } => std::slice::from_ref(diagnostic),
            ConfigError::Invalid { diagnostics, .. } => diagnostics,
        }
    }

    /// The configuration file the error is about, as the caller named it.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Invalid { path, .. } => path,
        }
    }
}

struct Rendered<'a>(&'a [Diagnostic]);

impl fmt::Display for Rendered<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics during one load.
#[derive(Debug, Default)]
pub(crate) struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    pub(crate) fn push(&mut self, d: Diagnostic) {
        self.list.push(d);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }

    /// In file order, without exact duplicates.
    pub(crate) fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort_by_key(Diagnostic::order);
        self.list.dedup();
        self.list
    }
}
