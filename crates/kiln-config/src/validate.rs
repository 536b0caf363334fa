//! Stage two: turn the `raw` file into the checked [`model`](crate::model).
//!
//! Owns every rule that TOML types cannot express: interpolation of string values, defaults,
//! ranges, names, mutually exclusive keys, resolving relative paths against the config's
//! directory and checking that input files exist. Every problem is recorded and validation
//! goes on, so one run reports as much as it can; where a value is invalid a placeholder takes
//! its place, and the caller discards the model whenever anything was recorded. This module
//! reads nothing but the first bytes of the base disk (to detect its format) and file metadata.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use crate::interpolate::{Interpolator, Scope};
use crate::model::{
    Accelerator, CollectStep, Config, DiskFormat, FileStep, Generalize, GeneralizeOp, HostKeyCheck,
    Image, Output, Project, QemuSource, ShellBody, ShellStep, Shutdown, Source, Ssh, Step,
    StepKind,
};
use crate::raw::{self, Spanned};
use crate::suggest;

const DEFAULT_OUTPUT_DIR: &str = "output";
const DEFAULT_MEMORY_MIB: i64 = 512;
const MEMORY_MIB: (i64, i64) = (64, 1_048_576);
const DEFAULT_CPUS: i64 = 1;
const CPUS: (i64, i64) = (1, 64);
const DEFAULT_SSH_USER: &str = "root";
const DEFAULT_SSH_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DEFAULT_SHUTDOWN_COMMAND: &str = "poweroff";
/// Cloud images log in a default user with password-less sudo; plain `poweroff` fails there.
const DEFAULT_SHUTDOWN_COMMAND_NON_ROOT: &str = "sudo poweroff";
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2 * 60);
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

const DISK_FORMATS: &[(&str, DiskFormat)] =
    &[("qcow2", DiskFormat::Qcow2), ("raw", DiskFormat::Raw)];
const HOST_KEY_CHECKS: &[(&str, HostKeyCheck)] = &[
    ("pinned", HostKeyCheck::Pinned),
    ("accept-new", HostKeyCheck::AcceptNew),
];
const ACCELERATORS: &[(&str, Accelerator)] = &[
    ("auto", Accelerator::Auto),
    ("kvm", Accelerator::Kvm),
    ("tcg", Accelerator::Tcg),
];

pub(crate) struct Validator<'a> {
    pub(crate) src: &'a SourceFile,
    /// The config file (absolute).
    pub(crate) path: PathBuf,
    /// Its directory (absolute): relative paths resolve here.
    pub(crate) root: PathBuf,
    pub(crate) vars: &'a BTreeMap<String, String>,
    pub(crate) interp: Interpolator<'a>,
    pub(crate) diags: &'a mut Diagnostics,
}

/// Whether an input path must be a regular file or may also be a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    File,
    FileOrDir,
}

impl Validator<'_> {
    /// The model, complete but meaningful only when no diagnostic was recorded.
    pub(crate) fn config(mut self, file: &raw::File) -> Config {
        let project = self.project(file.project.as_ref());
        let mut images = Vec::new();
        match &file.image {
            None => self.push(
                self.src
                    .file_error("no image is defined")
                    .with_help("add an `[[image]]` table with a `name` and a `source`"),
            ),
            Some(list) => {
                if let Some(list) = list.get() {
                    if list.is_empty() {
                        self.push(
                            self.src
                                .error(list_span(file), "no image is defined")
                                .with_key("image")
                                .with_help("add at least one image to `image`"),
                        );
                    }
                    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                    for image in list {
                        if let Some(image) = self.image(&project.name, image, &mut seen) {
                            images.push(image);
                        }
                    }
                }
            }
        }
        Config {
            path: self.path.clone(),
            root: self.root.clone(),
            project,
            vars: self.vars.clone(),
            images,
        }
    }

    fn push(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn error<T>(&self, at: &Spanned<T>, message: String) -> Diagnostic {
        self.src
            .error(at.span.clone(), message)
            .with_key(at.path.clone())
    }

    fn project(&mut self, project: Option<&Spanned<raw::Project>>) -> Project {
        let Some(project) = project else {
            self.push(
                self.src
                    .file_error("missing table `[project]`")
                    .with_key("project")
                    .with_help("add `[project]` with `name = \"...\"`"),
            );
            return Project {
                name: String::new(),
                output_dir: self.root.join(DEFAULT_OUTPUT_DIR),
            };
        };
        let Some(raw) = project.get() else {
            return Project {
                name: String::new(),
                output_dir: self.root.join(DEFAULT_OUTPUT_DIR),
            };
        };
        let name = self.try_string(Scope::default(), &raw.name);
        if name.as_ref().is_some_and(|n| n.trim().is_empty()) {
            let d = self.error(&raw.name, String::from("`project.name` is empty"));
            self.push(d);
        }
        let name = name.unwrap_or_default();
        let scope = Scope {
            project: Some(&name),
            image: None,
        };
        let output_dir = match &raw.output_dir {
            Some(dir) => self.output_path(scope, dir),
            None => self.root.join(DEFAULT_OUTPUT_DIR),
        };
        Project { name, output_dir }
    }

    fn image(
        &mut self,
        project: &str,
        image: &Spanned<raw::Image>,
        seen: &mut BTreeMap<String, usize>,
    ) -> Option<Image> {
        let raw = image.get()?;
        let scope = Scope {
            project: Some(project),
            image: None,
        };
        let checked_name = self.try_string(scope, &raw.name);
        if let Some(name) = &checked_name {
            if !is_image_name(name) {
                let d = self
                    .error(&raw.name, format!("invalid image name `{name}`"))
                    .with_help(
                        "image names start with a lowercase letter or a digit and contain only \
                         `a-z`, `0-9`, `_` and `-`",
                    );
                self.push(d);
            } else if let Some(&first) = seen.get(name) {
                let d = self
                    .error(&raw.name, format!("duplicate image name `{name}`"))
                    .with_note(format!(
                        "`{name}` was first defined at {}",
                        self.src.position(first)
                    ));
                self.push(d);
            } else {
                seen.insert(name.clone(), raw.name.span.start);
            }
        }
        // After a problem with the name, later messages still read sensibly with the text as
        // written.
        let name = checked_name
            .or_else(|| raw.name.get().cloned())
            .unwrap_or_default();
        let scope = Scope {
            project: Some(project),
            image: Some(&name),
        };
        let source = self.source(scope, &raw.source);
        let ssh = self.ssh(scope, raw.ssh.as_ref());
        let shutdown = self.shutdown(scope, raw.shutdown.as_ref(), &ssh.user);
        let provision = self.steps(scope, raw.provision.as_ref());
        let test = self.steps(scope, raw.test.as_ref());
        let generalize = self.generalize(scope, raw.generalize.as_ref());
        let output = self.output(scope, &name, raw.output.as_ref());
        Some(Image {
            name,
            source: source?,
            ssh,
            shutdown,
            provision,
            test,
            generalize,
            output,
        })
    }

    fn generalize(
        &mut self,
        scope: Scope<'_>,
        generalize: Option<&Spanned<raw::Generalize>>,
    ) -> Generalize {
        match generalize.and_then(Spanned::get) {
            None => Generalize::default(),
            Some(raw::Generalize::Enabled(enabled)) => Generalize {
                enabled: *enabled,
                extra: Vec::new(),
            },
            Some(raw::Generalize::With(ops)) => {
                let mut extra: Vec<GeneralizeOp> = ops
                    .iter()
                    .filter_map(|op| self.choice(scope, op, &GeneralizeOp::ALL, "operation"))
                    .collect();
                extra.sort();
                extra.dedup();
                Generalize {
                    enabled: true,
                    extra,
                }
            }
        }
    }

    fn source(&mut self, scope: Scope<'_>, source: &Spanned<raw::Source>) -> Option<Source> {
        match source.get()? {
            raw::Source::Qemu(qemu) => self.qemu(scope, qemu.get()?).map(Source::Qemu),
        }
    }

    fn qemu(&mut self, scope: Scope<'_>, raw: &raw::Qemu) -> Option<QemuSource> {
        let disk = self.input_path(scope, &raw.disk, Want::File);
        let format = match &raw.format {
            Some(format) => self.choice(scope, format, DISK_FORMATS, "disk format"),
            None => disk.as_deref().map(detect_format),
        };
        let kernel = raw
            .kernel
            .as_ref()
            .and_then(|k| self.input_path(scope, k, Want::File));
        let initrd = raw
            .initrd
            .as_ref()
            .and_then(|i| self.input_path(scope, i, Want::File));
        let append = raw.append.as_ref().map(|a| self.string(scope, a));
        if raw.kernel.is_none() {
            for (key, value) in [("initrd", &raw.initrd), ("append", &raw.append)] {
                if let Some(value) = value {
                    let d = self
                        .error(value, format!("`{key}` is set without `kernel`"))
                        .with_help(format!(
                            "`{key}` only applies when booting a kernel directly: add \
                             `kernel = \"...\"` or remove `{key}`"
                        ));
                    self.push(d);
                }
            }
        }
        let memory = self.int_in(raw.memory.as_ref(), DEFAULT_MEMORY_MIB, MEMORY_MIB, "MiB");
        let cpus = self.int_in(raw.cpus.as_ref(), DEFAULT_CPUS, CPUS, "CPUs");
        let accelerator = match &raw.accelerator {
            Some(a) => self.choice(scope, a, ACCELERATORS, "accelerator"),
            None => Some(Accelerator::Auto),
        };
        Some(QemuSource {
            disk: disk?,
            format: format?,
            kernel,
            initrd,
            append,
            memory_mib: memory,
            cpus,
            accelerator: accelerator?,
        })
    }

    fn ssh(&mut self, scope: Scope<'_>, ssh: Option<&Spanned<raw::Ssh>>) -> Ssh {
        let raw = ssh.and_then(Spanned::get);
        let user = match raw.and_then(|r| r.user.as_ref()) {
            Some(user) => self.non_empty(scope, user),
            None => DEFAULT_SSH_USER.to_owned(),
        };
        let timeout = match raw.and_then(|r| r.timeout.as_ref()) {
            Some(t) => self.duration(scope, t).unwrap_or(DEFAULT_SSH_TIMEOUT),
            None => DEFAULT_SSH_TIMEOUT,
        };
        let host_key = match raw.and_then(|r| r.host_key.as_ref()) {
            Some(h) => self
                .choice(scope, h, HOST_KEY_CHECKS, "host key check")
                .unwrap_or(HostKeyCheck::Pinned),
            None => HostKeyCheck::Pinned,
        };
        Ssh {
            user,
            timeout,
            host_key,
        }
    }

    fn shutdown(
        &mut self,
        scope: Scope<'_>,
        shutdown: Option<&Spanned<raw::Shutdown>>,
        ssh_user: &str,
    ) -> Shutdown {
        let raw = shutdown.and_then(Spanned::get);
        let command = match raw.and_then(|r| r.command.as_ref()) {
            Some(command) => self.non_empty(scope, command),
            None if ssh_user == DEFAULT_SSH_USER => DEFAULT_SHUTDOWN_COMMAND.to_owned(),
            None => DEFAULT_SHUTDOWN_COMMAND_NON_ROOT.to_owned(),
        };
        let timeout = match raw.and_then(|r| r.timeout.as_ref()) {
            Some(t) => self.duration(scope, t).unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            None => DEFAULT_SHUTDOWN_TIMEOUT,
        };
        Shutdown { command, timeout }
    }

    fn steps(
        &mut self,
        scope: Scope<'_>,
        steps: Option<&Spanned<Vec<Spanned<raw::Step>>>>,
    ) -> Vec<Step> {
        let Some(steps) = steps.and_then(Spanned::get) else {
            return Vec::new();
        };
        steps.iter().filter_map(|s| self.step(scope, s)).collect()
    }

    fn step(&mut self, scope: Scope<'_>, step: &Spanned<raw::Step>) -> Option<Step> {
        let (name, kind) = match step.get()? {
            raw::Step::Shell(shell) => self.shell(scope, shell)?,
            raw::Step::File(file) => {
                let raw = file.get()?;
                let from = self.input_path(scope, &raw.from, Want::FileOrDir);
                let to = self.non_empty(scope, &raw.to);
                let name = self.step_name(scope, raw.name.as_ref(), || format!("file {to}"));
                (name, StepKind::File(FileStep { from: from?, to }))
            }
            raw::Step::Collect(collect) => {
                let raw = collect.get()?;
                let from = self.non_empty(scope, &raw.from);
                let to = self.output_path(scope, &raw.to);
                let name = self.step_name(scope, raw.name.as_ref(), || format!("collect {from}"));
                (name, StepKind::Collect(CollectStep { from, to }))
            }
        };
        Some(Step { name, kind })
    }

    fn shell(
        &mut self,
        scope: Scope<'_>,
        shell: &Spanned<raw::Shell>,
    ) -> Option<(String, StepKind)> {
        let raw = shell.get()?;
        let body = match (&raw.inline, &raw.script) {
            (Some(_), Some(script)) => {
                let d = self
                    .error(
                        script,
                        format!("`{}` has both `inline` and `script`", shell.path),
                    )
                    .with_key(shell.path.clone())
                    .with_help("use one of them; to run both, make two steps");
                self.push(d);
                None
            }
            (None, None) => {
                let d = self
                    .error(
                        shell,
                        format!("`{}` needs `inline` or `script`", shell.path),
                    )
                    .with_help("add `inline = [\"command\"]` or `script = \"file.sh\"`");
                self.push(d);
                None
            }
            (Some(inline), None) => inline.get().map(|lines| {
                if lines.is_empty() {
                    let d = self
                        .error(inline, format!("`{}` is empty", inline.path))
                        .with_help("add a command, or remove the step");
                    self.push(d);
                }
                ShellBody::Inline(lines.iter().map(|l| self.string(scope, l)).collect())
            }),
            (None, Some(script)) => self
                .input_path(scope, script, Want::File)
                .map(ShellBody::Script),
        };
        let mut env = BTreeMap::new();
        if let Some(entries) = raw.env.as_ref().and_then(Spanned::get) {
            for (key, value) in &entries.0 {
                let Some(name) = key.get() else { continue };
                if !is_env_name(name) {
                    let d = self
                        .error(key, format!("invalid environment variable name `{name}`"))
                        .with_help(
                            "names start with a letter or `_` and contain only letters, digits \
                             and `_`",
                        );
                    self.push(d);
                }
                let value = self.string(scope, value);
                env.insert(name.clone(), value);
            }
        }
        let workdir = raw.workdir.as_ref().map(|w| self.non_empty(scope, w));
        let sudo = raw
            .sudo
            .as_ref()
            .and_then(|s| s.get().copied())
            .unwrap_or(false);
        let timeout = raw.timeout.as_ref().and_then(|t| self.duration(scope, t));
        let body = body?;
        let name = self.step_name(scope, raw.name.as_ref(), || match &body {
            ShellBody::Inline(_) => String::from("shell"),
            ShellBody::Script(path) => match path.file_name() {
                Some(file) => format!("shell {}", file.to_string_lossy()),
                None => String::from("shell"),
            },
        });
        let written = raw
            .inline
            .as_ref()
            .and_then(Spanned::get)
            .map(|lines| lines.iter().filter_map(|l| l.get().cloned()).collect())
            .unwrap_or_default();
        let step = ShellStep {
            body,
            written,
            env,
            workdir,
            sudo,
            timeout,
        };
        Some((name, StepKind::Shell(step)))
    }

    fn step_name(
        &mut self,
        scope: Scope<'_>,
        name: Option<&Spanned<String>>,
        default: impl FnOnce() -> String,
    ) -> String {
        match name {
            Some(name) => self.non_empty(scope, name),
            None => default(),
        }
    }

    fn output(
        &mut self,
        scope: Scope<'_>,
        image: &str,
        output: Option<&Spanned<raw::Output>>,
    ) -> Output {
        let raw = output.and_then(Spanned::get);
        let format = match raw.and_then(|r| r.format.as_ref()) {
            Some(f) => self
                .choice(scope, f, DISK_FORMATS, "disk format")
                .unwrap_or(DiskFormat::Qcow2),
            None => DiskFormat::Qcow2,
        };
        let compress_value = raw.and_then(|r| r.compress.as_ref());
        let compress = compress_value
            .and_then(|c| c.get().copied())
            .unwrap_or(false);
        if let Some(c) = compress_value
            && compress
            && format == DiskFormat::Raw
        {
            let d = self
                .error(
                    c,
                    String::from("`compress = true` needs `format = \"qcow2\"`"),
                )
                .with_help("raw images cannot be compressed: remove `compress` or write qcow2");
            self.push(d);
        }
        let file_name = match raw.and_then(|r| r.name.as_ref()) {
            Some(name) => {
                let file_name = self.string(scope, name);
                if name.get().is_some() && !is_plain_file_name(&file_name) {
                    let d = self
                        .error(name, format!("invalid output file name `{file_name}`"))
                        .with_help(
                            "give a plain file name without `/`; images are written to \
                             `<output_dir>/<image>/<name>`",
                        );
                    self.push(d);
                }
                file_name
            }
            None => format!("{image}.{}", format.as_str()),
        };
        Output {
            format,
            compress,
            file_name,
        }
    }

    /// The interpolated string; empty after an error (which is recorded).
    fn string(&mut self, scope: Scope<'_>, s: &Spanned<String>) -> String {
        self.try_string(scope, s).unwrap_or_default()
    }

    /// The interpolated string; `None` when the value is invalid (which is recorded).
    fn try_string(&mut self, scope: Scope<'_>, s: &Spanned<String>) -> Option<String> {
        self.interp.render(self.src, scope, s, self.diags)
    }

    fn non_empty(&mut self, scope: Scope<'_>, s: &Spanned<String>) -> String {
        let before = self.diags.len();
        let value = self.string(scope, s);
        if s.get().is_some() && self.diags.len() == before && value.trim().is_empty() {
            let d = self.error(s, format!("`{}` is empty", s.path));
            self.push(d);
        }
        value
    }

    /// Interpolate and resolve against the config's directory; the path need not exist.
    fn output_path(&mut self, scope: Scope<'_>, s: &Spanned<String>) -> PathBuf {
        let value = self.non_empty(scope, s);
        resolve(&self.root, &value)
    }

    /// Interpolate, resolve and check that the input exists.
    fn input_path(&mut self, scope: Scope<'_>, s: &Spanned<String>, want: Want) -> Option<PathBuf> {
        s.get()?;
        let before = self.diags.len();
        let value = self.non_empty(scope, s);
        if self.diags.len() > before {
            return None;
        }
        let path = resolve(&self.root, &value);
        let problem = match fs::metadata(&path) {
            Ok(meta) if want == Want::File && meta.is_dir() => Some(format!(
                "`{}` is a directory, not a file: `{}`",
                s.path,
                path.display()
            )),
            Ok(meta) if !meta.is_file() && !meta.is_dir() => Some(format!(
                "`{}` is not a regular file: `{}`",
                s.path,
                path.display()
            )),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Some(format!(
                "file not found for `{}`: `{}`",
                s.path,
                path.display()
            )),
            Err(e) => Some(format!(
                "cannot access `{}` for `{}`: {e}",
                path.display(),
                s.path
            )),
        };
        match problem {
            Some(message) => {
                let d = self.error(s, message);
                self.push(d);
                None
            }
            None => Some(path),
        }
    }

    fn duration(&mut self, scope: Scope<'_>, s: &Spanned<String>) -> Option<Duration> {
        s.get()?;
        let before = self.diags.len();
        let text = self.string(scope, s);
        if self.diags.len() > before {
            return None;
        }
        let problem = match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => format!("`{}` must be longer than zero", s.path),
            Ok(d) => return Some(d),
            Err(e) => format!("invalid duration `{text}` for `{}`: {e}", s.path),
        };
        let d = self
            .error(s, problem)
            .with_help("write a duration such as `90s`, `5m` or `1h 30m`");
        self.push(d);
        None
    }

    fn choice<T: Copy>(
        &mut self,
        scope: Scope<'_>,
        s: &Spanned<String>,
        options: &[(&str, T)],
        noun: &str,
    ) -> Option<T> {
        s.get()?;
        let before = self.diags.len();
        let text = self.string(scope, s);
        if self.diags.len() > before {
            return None;
        }
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let d = self
            .error(s, format!("unknown {noun} `{text}` for `{}`", s.path))
            .with_help(suggest::help(&text, &names));
        self.push(d);
        None
    }

    fn int_in(
        &mut self,
        value: Option<&Spanned<i64>>,
        default: i64,
        (lo, hi): (i64, i64),
        unit: &str,
    ) -> u32 {
        let Some(spanned) = value else {
            return clamp_u32(default);
        };
        let Some(&n) = spanned.get() else {
            return clamp_u32(default);
        };
        if !(lo..=hi).contains(&n) {
            let d = self
                .error(
                    spanned,
                    format!("value out of range for `{}`: {n}", spanned.path),
                )
                .with_help(format!("expected {lo} to {hi} ({unit})"));
            self.push(d);
            return clamp_u32(default);
        }
        clamp_u32(n)
    }
}

fn clamp_u32(n: i64) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

fn list_span(file: &raw::File) -> std::ops::Range<usize> {
    file.image.as_ref().map_or(0..0, |i| i.span.clone())
}

/// `^[a-z0-9][a-z0-9_-]*$`
fn is_image_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`, what a POSIX shell accepts as a variable name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// `root.join(path)` without `.` components (`./files` → `<root>/files`).
fn resolve(root: &Path, path: &str) -> PathBuf {
    root.join(path)
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// qcow2 when the file starts with qcow2's magic, raw otherwise (including unreadable files,
/// whose problem is reported by the existence check).
fn detect_format(disk: &Path) -> DiskFormat {
    let mut magic = Vec::with_capacity(4);
    let read = fs::File::open(disk).and_then(|f| f.take(4).read_to_end(&mut magic));
    if read.is_ok() && magic == QCOW2_MAGIC {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names() {
        for good in ["tiny", "0day", "a_b-c"] {
            assert!(is_image_name(good), "{good}");
        }
        for bad in ["", "Tiny", "-a", "_a", "a b", "a/b", "ä"] {
            assert!(!is_image_name(bad), "{bad}");
        }
    }

    #[test]
    fn file_names() {
        assert!(is_plain_file_name("tiny.qcow2"));
        for bad in ["", ".", "..", "a/b", "a\\b"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }

    #[test]
    fn resolves_relative_paths() {
        let root = Path::new("/work/p");
        assert_eq!(
            resolve(root, "./files/motd"),
            Path::new("/work/p/files/motd")
        );
        assert_eq!(resolve(root, "/abs/x"), Path::new("/abs/x"));
        assert_eq!(resolve(root, "../x"), Path::new("/work/p/../x"));
    }
}
