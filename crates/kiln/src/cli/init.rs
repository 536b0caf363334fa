//! `kiln init`: a commented kiln.toml to start from.

use std::io::Write;
use std::path::Path;

use super::{ExitCode, InitArgs, report};

const TEMPLATE: &str = include_str!("init.kiln.toml");

pub(super) fn run(dir: &Path, file: &Path, args: &InitArgs) -> Result<(), ExitCode> {
    let name = args.name.clone().unwrap_or_else(|| {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .map(|n| sanitize(&n))
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "my-project".into())
    });
    let text = TEMPLATE.replace("@NAME@", &name).replace(
        "@DISK@",
        &args.disk.replace('\\', "\\\\").replace('"', "\\\""),
    );
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if args.force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut f = match options.open(file) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(report(
                ExitCode::Usage,
                &format!(
                    "{} already exists (use --force to overwrite it)",
                    file.display()
                ),
                &[],
            ));
        }
        Err(e) => {
            return Err(report(
                ExitCode::Usage,
                &format!("create {}: {e}", file.display()),
                &[],
            ));
        }
    };
    f.write_all(text.as_bytes()).map_err(|e| {
        report(
            ExitCode::Internal,
            &format!("write {}: {e}", file.display()),
            &[],
        )
    })?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "wrote {}\nnext: point `disk` at a base image, then `kiln validate`, `kiln plan`, `kiln build`",
        file.display()
    );
    Ok(())
}

/// Image and project names are `[a-z0-9][a-z0-9_-]*`.
fn sanitize(name: &str) -> String {
    let lower: String = name
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    lower.trim_start_matches(['-', '_']).to_string()
}
