//! Variables: `[vars]`, then each `--var-file`, then each `--var`, later winning.
//!
//! Owns the merge and its rules: variable names are identifiers and not reserved, values are
//! strings, and a variable set from outside the file must be declared in `[vars]`. Var files
//! are read and parsed here (with the same deserializer, so their errors point into them).
//! Values are not interpolated.

use std::collections::BTreeMap;
use std::fs;

use toml::de::DeTable;

use crate::LoadOptions;
use crate::de;
use crate::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::interpolate::RESERVED;
use crate::raw::{Entries, Spanned};
use crate::suggest;

type RawVars = Spanned<Entries<Spanned<String>>>;

/// The merged variables. Problems are recorded; what could be read is still returned.
pub(crate) fn merge(
    src: &SourceFile,
    declared: Option<&RawVars>,
    opts: &LoadOptions,
    diags: &mut Diagnostics,
) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    // Names known to `[vars]`, even those whose value is invalid. `None` when `[vars]` itself
    // could not be read: then nothing from outside is called unknown.
    let mut names: Option<Vec<String>> = Some(Vec::new());
    match declared.map(Spanned::get) {
        None => {}
        Some(None) => names = None,
        Some(Some(entries)) => {
            for (key, value) in &entries.0 {
                let Some(name) = key.get() else { continue };
                check_name(src, key, name, diags);
                if let Some(names) = &mut names {
                    names.push(name.clone());
                }
                if let Some(value) = value.get() {
                    vars.insert(name.clone(), value.clone());
                }
            }
        }
    }
    let is_declared = |name: &str| names.as_ref().is_none_or(|n| n.iter().any(|d| d == name));
    let help_for = |name: &str| match names
        .as_ref()
        .and_then(|n| suggest::closest(name, n.iter().map(String::as_str)))
    {
        Some(c) => format!("did you mean `{c}`?"),
        None => format!(
            "variables must be declared in `[vars]` of `{}` before they can be set",
            src.display_path().display()
        ),
    };

    for (i, file) in opts.var_files.iter().enumerate() {
        let rank = i + 1;
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(e) => {
                let empty = SourceFile::new(file, "", rank);
                diags.push(empty.file_error(format!("cannot read var file: {e}")));
                continue;
            }
        };
        let var_src = SourceFile::new(file, &text, rank);
        let doc = match DeTable::parse(&text) {
            Ok(doc) => doc,
            Err(e) => {
                diags.push(crate::syntax_error(&var_src, &e));
                continue;
            }
        };
        let Some(entries) = de::from_document::<Entries<Spanned<String>>>(&var_src, doc, diags)
        else {
            continue;
        };
        for (key, value) in entries.0 {
            let Some(name) = key.get() else { continue };
            if !is_declared(name) {
                diags.push(
                    var_src
                        .error(key.span.clone(), format!("unknown variable `{name}`"))
                        .with_key(key.path.clone())
                        .with_help(help_for(name)),
                );
                continue;
            }
            if let Some(value) = value.value {
                vars.insert(name.clone(), value);
            }
        }
    }

    let rank = opts.var_files.len() + 1;
    for (name, value) in &opts.vars {
        if !is_declared(name) {
            diags.push(
                Diagnostic::without_file(
                    format!("unknown variable `{name}` in `--var {name}={value}`"),
                    rank,
                )
                .with_help(help_for(name)),
            );
            continue;
        }
        vars.insert(name.clone(), value.clone());
    }
    vars
}

fn check_name(src: &SourceFile, key: &Spanned<String>, name: &str, diags: &mut Diagnostics) {
    let problem = if RESERVED.contains(&name) {
        Some((
            format!("variable name `{name}` is reserved"),
            format!(
                "{} are built into templates; choose another name",
                suggest::list(RESERVED)
            ),
        ))
    } else if !is_identifier(name) {
        Some((
            format!("invalid variable name `{name}`"),
            String::from(
                "variable names start with a letter or `_` and contain only letters, digits and \
                 `_`, so that templates can use them as `{{ name }}`",
            ),
        ))
    } else {
        None
    };
    if let Some((message, help)) = problem {
        diags.push(
            src.error(key.span.clone(), message)
                .with_key(key.path.clone())
                .with_help(help),
        );
    }
}

fn is_identifier(name: &str) -> bool {
    crate::validate::is_env_name(name)
}
