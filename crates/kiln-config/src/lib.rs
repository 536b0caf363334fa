//! `kiln.toml`: reading, validating and interpolating a kiln configuration.
//!
//! Two stages (STYLE.md §5): `raw` deserialises the file as written, `validate` turns it into
//! the checked [`model`]. Errors carry the file, line, column, the key path and, when a near
//! name exists, a suggestion; one load reports every problem it can find (it stops early only
//! at a TOML syntax error). This crate does no I/O beyond reading the config and var files and
//! checking that referenced input files exist (reading the first bytes of the base disk to
//! detect its format); it never runs anything and never reads the process environment (the
//! caller passes it in [`LoadOptions::env`]).
//!
//! Flow: [`load`] reads the file → `toml::de::DeTable::parse` (spans) → `de` deserialises the
//! `raw` types, recording type errors and unknown keys → `vars` merges `[vars]`, var files
//! and `--var`s → `validate` interpolates (`interpolate`), applies defaults and checks the
//! rest → [`Config`] or a [`ConfigError`] listing every [`Diagnostic`].

mod de;
mod diagnostic;
mod interpolate;
pub mod model;
mod raw;
pub mod suggest;
mod validate;
mod vars;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use diagnostic::{ConfigError, Diagnostic};
pub use model::*;

use diagnostic::{Diagnostics, SourceFile};

/// What the command line and the process add to the file.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `--var KEY=VALUE`, in order; each key must be declared in `[vars]`.
    pub vars: Vec<(String, String)>,
    /// `--var-file FILE`, in order; TOML files of `key = "value"`, applied before `vars`.
    pub var_files: Vec<PathBuf>,
    /// The environment templates see as `env.NAME` (normally `std::env::vars()`).
    pub env: BTreeMap<String, String>,
}

/// Read, parse, validate and interpolate the configuration at `path`.
///
/// `path` is shown in errors as given, so a relative path stays relative. Relative paths in
/// the file resolve against the file's directory.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| {
        let diagnostic = SourceFile::new(path, "", 0)
            .file_error(format!("cannot read the configuration file: {source}"));
        ConfigError::Read {
            path: path.to_path_buf(),
            source,
            diagnostic: Box::new(diagnostic),
        }
    })?;
    let absolute = absolute(path);
    let root = absolute
        .parent()
        .map_or_else(|| absolute.clone(), Path::to_path_buf);
    load_impl(path, &text, absolute, root, opts)
}

/// Like [`load`], from text (for tests and fuzzing): `display_path` names the file in errors,
/// `base_dir` is where relative paths resolve (and where the file is taken to be:
/// [`Config::path`] is `base_dir` joined with `display_path`'s file name).
pub fn load_str(
    display_path: &Path,
    text: &str,
    base_dir: &Path,
    opts: &LoadOptions,
) -> Result<Config, ConfigError> {
    let root = absolute(base_dir);
    let path = root.join(display_path.file_name().unwrap_or(display_path.as_os_str()));
    load_impl(display_path, text, path, root, opts)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn load_impl(
    display_path: &Path,
    text: &str,
    path: PathBuf,
    root: PathBuf,
    opts: &LoadOptions,
) -> Result<Config, ConfigError> {
    let src = SourceFile::new(display_path, text, 0);
    let mut diags = Diagnostics::default();
    let invalid = |diags: Diagnostics| ConfigError::Invalid {
        path: display_path.to_path_buf(),
        diagnostics: diags.into_sorted(),
    };
    let doc = match toml::de::DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(syntax_error(&src, &e));
            return Err(invalid(diags));
        }
    };
    let Some(file) = de::from_document::<raw::File>(&src, doc, &mut diags) else {
        return Err(invalid(diags));
    };
    let vars = vars::merge(&src, file.vars.as_ref(), opts, &mut diags);
    let config = validate::Validator {
        src: &src,
        path,
        root,
        vars: &vars,
        interp: interpolate::Interpolator::new(&vars, &opts.env),
        diags: &mut diags,
    }
    .config(&file);
    if diags.is_empty() {
        Ok(config)
    } else {
        Err(invalid(diags))
    }
}

/// A TOML syntax error as a diagnostic.
pub(crate) fn syntax_error(src: &SourceFile, e: &toml::de::Error) -> Diagnostic {
    let message = format!("invalid TOML: {}", e.message().trim_end());
    match e.span() {
        Some(span) => src.error(span, message),
        None => src.file_error(message),
    }
}
