//! Files that load: defaults, path resolution, interpolation and variable precedence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_config::{
    Accelerator, Config, ConfigError, DiskFormat, LoadOptions, ShellBody, Source, StepKind,
};

fn good_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good")
}

fn env() -> BTreeMap<String, String> {
    BTreeMap::from([("HOME".to_owned(), "/home/kiln".to_owned())])
}

/// `tests/good/full.toml`, with `/ABS` standing for the fixture directory.
fn load_full(opts: &LoadOptions) -> Result<Config, ConfigError> {
    let dir = good_dir();
    let text = std::fs::read_to_string(dir.join("full.toml")).unwrap();
    let text = text.replace("/ABS", &dir.display().to_string());
    kiln_config::load_str(Path::new("full.toml"), &text, &dir, opts)
}

fn qemu(config: &Config, image: usize) -> &kiln_config::QemuSource {
    match &config.images[image].source {
        Source::Qemu(q) => q,
    }
}

#[test]
fn minimal_file_gets_every_default() {
    let dir = good_dir();
    let config = kiln_config::load(&dir.join("minimal.toml"), &LoadOptions::default()).unwrap();
    assert_eq!(config.path, dir.join("minimal.toml"));
    assert_eq!(config.root, dir);
    assert_eq!(config.project.name, "minimal");
    assert_eq!(config.project.output_dir, dir.join("output"));
    assert!(config.vars.is_empty());
    assert_eq!(config.images.len(), 1);
    let image = &config.images[0];
    assert_eq!(image.name, "tiny");
    let q = qemu(&config, 0);
    assert_eq!(q.disk, dir.join("base.raw"));
    assert_eq!(
        q.format,
        DiskFormat::Raw,
        "detected from the missing qcow2 magic"
    );
    assert_eq!(q.kernel, None);
    assert_eq!(q.initrd, None);
    assert_eq!(q.append, None);
    assert_eq!(q.memory_mib, 512);
    assert_eq!(q.cpus, 1);
    assert_eq!(q.accelerator, Accelerator::Auto);
    assert_eq!(image.ssh.user, "root");
    assert_eq!(image.ssh.host_key, kiln_config::HostKeyCheck::Pinned);
    assert_eq!(image.generalize, kiln_config::Generalize::default());
    assert_eq!(image.ssh.timeout, Duration::from_secs(300));
    assert_eq!(image.shutdown.command, "poweroff");
    assert_eq!(image.shutdown.timeout, Duration::from_secs(120));
    assert!(image.provision.is_empty());
    assert!(image.test.is_empty());
    assert_eq!(image.output.format, DiskFormat::Qcow2);
    assert!(!image.output.compress);
    assert_eq!(image.output.file_name, "tiny.qcow2");
}

#[test]
fn full_file_as_json() {
    let opts = LoadOptions {
        env: env(),
        ..LoadOptions::default()
    };
    let config = load_full(&opts).unwrap();
    let json = serde_json::to_string_pretty(&config).unwrap();
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(&good_dir().display().to_string()), "[GOOD]");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("full_config", json));
}

#[test]
fn full_file_fields() {
    let dir = good_dir();
    let opts = LoadOptions {
        env: env(),
        ..LoadOptions::default()
    };
    let config = load_full(&opts).unwrap();
    assert_eq!(config.project.output_dir, dir.join("build/quickstart"));
    let q = qemu(&config, 0);
    assert_eq!(q.disk, dir.join("base.qcow2"), "`./` is dropped");
    assert_eq!(q.format, DiskFormat::Qcow2, "detected from the magic bytes");
    assert_eq!(q.kernel.as_deref(), Some(dir.join("vmlinuz").as_path()));
    assert_eq!(q.append.as_deref(), Some("console=ttyS0 home=/home/kiln"));
    assert_eq!(
        (q.memory_mib, q.cpus, q.accelerator),
        (1024, 2, Accelerator::Tcg)
    );

    let tiny = &config.images[0];
    assert_eq!(tiny.ssh.user, "builder");
    assert_eq!(tiny.ssh.host_key, kiln_config::HostKeyCheck::AcceptNew);
    assert_eq!(
        tiny.generalize,
        kiln_config::Generalize {
            enabled: true,
            extra: vec![
                kiln_config::GeneralizeOp::MachineId,
                kiln_config::GeneralizeOp::Tmp
            ],
        },
        "extra operations in a fixed order, without repeats"
    );
    assert_eq!(tiny.ssh.timeout, Duration::from_secs(90));
    assert_eq!(tiny.shutdown.timeout, Duration::from_secs(90));
    assert_eq!(tiny.output.file_name, "tiny-quickstart.qcow2");
    assert!(tiny.output.compress);

    let names: Vec<&str> = tiny.provision.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        ["say hello", "shell setup.sh", "file /etc/motd", "files"]
    );
    let StepKind::Shell(shell) = &tiny.provision[0].kind else {
        panic!("a shell step");
    };
    let ShellBody::Inline(lines) = &shell.body else {
        panic!("inline");
    };
    assert_eq!(lines, &["mkdir -p /opt/app", "echo hello > /opt/app/hi"]);
    assert_eq!(shell.env.get("A").map(String::as_str), Some("tiny"));
    assert_eq!(shell.workdir.as_deref(), Some("/tmp"));
    assert!(shell.sudo);
    assert_eq!(shell.timeout, Some(Duration::from_secs(600)));
    let StepKind::File(dir_upload) = &tiny.provision[3].kind else {
        panic!("a file step");
    };
    assert_eq!(dir_upload.from, dir.join("files"));
    assert_eq!(dir_upload.to, "/opt/app/files/");

    let test_names: Vec<&str> = tiny.test.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(test_names, ["shell", "collect /var/log/build.log"]);
    let StepKind::Collect(collect) = &tiny.test[1].kind else {
        panic!("a collect step");
    };
    assert_eq!(collect.to, dir.join("collected/tiny"));

    let raw = &config.images[1];
    assert_eq!(raw.name, "raw-hello");
    assert_eq!(qemu(&config, 1).disk, dir.join("base.raw"));
    assert_eq!(raw.output.file_name, "raw-hello.raw");
    let StepKind::Collect(collect) = &raw.test[0].kind else {
        panic!("a collect step");
    };
    assert_eq!(collect.to, Path::new("/tmp/kiln-collected"));
    assert_eq!(raw.test[0].name, "os");
}

/// A config in a fresh directory with a disk, for the tests below.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("disk.img"), b"raw").unwrap();
        Scratch { dir }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn load(&self, text: &str, opts: &LoadOptions) -> Result<Config, ConfigError> {
        kiln_config::load(&self.write("kiln.toml", text), opts)
    }
}

const WITH_VARS: &str = r#"
[project]
name = "p-{{ a }}"

[vars]
a = "file"
b = "file"
c = "file"
d = "file"

[[image]]
name = "i"
source = { qemu = { disk = "disk.img", append = "{{ a }} {{ b }} {{ c }} {{ d }}", kernel = "disk.img" } }
"#;

#[test]
fn var_files_and_vars_override_in_order() {
    let scratch = Scratch::new();
    let first = scratch.write(
        "first.toml",
        "b = \"first\"\nc = \"first\"\nd = \"first\"\n",
    );
    let second = scratch.write("second.toml", "c = \"second\"\nd = \"second\"\n");
    let opts = LoadOptions {
        vars: vec![("d".into(), "cli-1".into()), ("d".into(), "cli-2".into())],
        var_files: vec![first, second],
        env: BTreeMap::new(),
    };
    let config = scratch.load(WITH_VARS, &opts).unwrap();
    assert_eq!(
        qemu(&config, 0).append.as_deref(),
        Some("file first second cli-2")
    );
    assert_eq!(config.project.name, "p-file");
    let vars: Vec<(&str, &str)> = config
        .vars
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        vars,
        [
            ("a", "file"),
            ("b", "first"),
            ("c", "second"),
            ("d", "cli-2")
        ]
    );
}

#[test]
fn a_bad_var_file_points_into_itself() {
    let scratch = Scratch::new();
    let vars = scratch.write("vars.toml", "a = 1\n");
    let opts = LoadOptions {
        var_files: vec![vars.clone()],
        ..LoadOptions::default()
    };
    let err = scratch.load(WITH_VARS, &opts).unwrap_err();
    let [d] = err.diagnostics() else {
        panic!("one diagnostic: {err}");
    };
    assert_eq!(d.path(), Some(vars.as_path()));
    assert_eq!((d.line(), d.column()), (Some(1), Some(5)));
    assert_eq!(d.key_path(), Some("a"));
    assert_eq!(
        d.message(),
        "wrong type for `a`: expected a string, found an integer"
    );
}

#[test]
fn unreadable_var_file_is_reported() {
    let scratch = Scratch::new();
    let opts = LoadOptions {
        var_files: vec![scratch.dir.path().join("absent.toml")],
        ..LoadOptions::default()
    };
    let err = scratch.load(WITH_VARS, &opts).unwrap_err();
    let [d] = err.diagnostics() else {
        panic!("one diagnostic: {err}");
    };
    assert_eq!(
        d.message(),
        "cannot read var file: No such file or directory (os error 2)"
    );
}

#[test]
fn strings_without_braces_are_left_alone() {
    let scratch = Scratch::new();
    let text = r#"
[project]
name = "50% {done} {#x#} $HOME"
[[image]]
name = "i"
source = { qemu = { disk = "disk.img" } }
"#;
    let config = scratch.load(text, &LoadOptions::default()).unwrap();
    assert_eq!(config.project.name, "50% {done} {#x#} $HOME");
}

#[test]
fn templates_can_use_filters_and_keep_trailing_newlines() {
    let scratch = Scratch::new();
    let text = r#"
[project]
name = "{{ base | upper }}-{{ env.USER }}"
[vars]
base = "demo"
[[image]]
name = "{{ base }}"
source = { qemu = { disk = "disk.img" } }
provision = [{ shell = { inline = ["echo {{ image.name }} {{ project.name }}\n"] } }]
"#;
    let opts = LoadOptions {
        env: BTreeMap::from([("USER".into(), "ci".into())]),
        ..LoadOptions::default()
    };
    let config = scratch.load(text, &opts).unwrap();
    assert_eq!(config.project.name, "DEMO-ci");
    assert_eq!(config.images[0].name, "demo");
    let StepKind::Shell(shell) = &config.images[0].provision[0].kind else {
        panic!("shell");
    };
    let ShellBody::Inline(lines) = &shell.body else {
        panic!("inline");
    };
    assert_eq!(lines, &["echo demo DEMO-ci\n"]);
}

#[test]
fn images_may_be_an_inline_array() {
    let scratch = Scratch::new();
    let text = r#"
project = { name = "inline" }
image = [
  { name = "a", source = { qemu = { disk = "disk.img" } } },
  { name = "b", source = { qemu = { disk = "disk.img", format = "qcow2" } } },
]
"#;
    let config = scratch.load(text, &LoadOptions::default()).unwrap();
    let names: Vec<&str> = config.images.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(qemu(&config, 1).format, DiskFormat::Qcow2, "as given");
}

#[test]
fn relative_config_path_stays_relative_in_errors() {
    let scratch = Scratch::new();
    scratch.write("kiln.toml", "[project]\nname = \"\"\n");
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&scratch.dir.path().join("kiln.toml"), &cwd);
    let err = kiln_config::load(&relative, &LoadOptions::default()).unwrap_err();
    assert_eq!(err.path(), relative.as_path());
    let paths: Vec<Option<&Path>> = err.diagnostics().iter().map(|d| d.path()).collect();
    assert_eq!(paths, [Some(relative.as_path()), Some(relative.as_path())]);
    let messages: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(messages, ["`project.name` is empty", "no image is defined"]);
}

#[test]
fn missing_config_file_is_a_read_error() {
    let err =
        kiln_config::load(Path::new("no/such/kiln.toml"), &LoadOptions::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert_eq!(
        err.to_string(),
        "error: cannot read the configuration file: No such file or directory (os error 2)\n \
         --> no/such/kiln.toml"
    );
    assert_eq!(err.diagnostics().len(), 1);
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn diagnostics_have_accessors() {
    let err = kiln_config::load_str(
        Path::new("kiln.toml"),
        "[project]\nname = \"x\"\n\n[[image]]\nnmae = \"tiny\"\nsource = { qemu = {} }\n",
        Path::new("/nonexistent"),
        &LoadOptions::default(),
    )
    .unwrap_err();
    let messages: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(
        messages,
        [
            "unknown key `nmae` in `image[0]`",
            "missing key `disk` in `image[0].source.qemu`"
        ]
    );
    let d = &err.diagnostics()[0];
    assert_eq!(d.path(), Some(Path::new("kiln.toml")));
    assert_eq!((d.line(), d.column()), (Some(5), Some(1)));
    assert_eq!(d.key_path(), Some("image[0].nmae"));
    assert_eq!(d.help(), Some("did you mean `name`?"));
    assert_eq!(
        err.to_string(),
        "error: unknown key `nmae` in `image[0]`
 --> kiln.toml:5:1
  |
5 | nmae = \"tiny\"
  | ^^^^
  = help: did you mean `name`?

error: missing key `disk` in `image[0].source.qemu`
 --> kiln.toml:6:19
  |
6 | source = { qemu = {} }
  |                   ^^"
    );
}

/// `path` relative to `base` (both absolute), with `..` as needed.
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let path: Vec<_> = path.components().collect();
    let base: Vec<_> = base.components().collect();
    let common = path.iter().zip(&base).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..base.len() {
        out.push("..");
    }
    for c in &path[common..] {
        out.push(c);
    }
    out
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[test]
fn integers_in_any_toml_notation() {
    let scratch = Scratch::new();
    let text = r#"
[project]
name = "ints"
[[image]]
name = "i"
source = { qemu = { disk = "disk.img", memory = 1_024, cpus = 0x2 } }
"#;
    let config = scratch.load(text, &LoadOptions::default()).unwrap();
    assert_eq!(
        (qemu(&config, 0).memory_mib, qemu(&config, 0).cpus),
        (1024, 2)
    );
}

#[test]
fn dotted_keys_and_header_tables_mix() {
    let scratch = Scratch::new();
    let text = r#"
project.name = "dotted"
[[image]]
name = "i"
source.qemu.disk = "disk.img"
source.qemu.cpus = 4
ssh.user = "admin"
generalize = false
"#;
    let config = scratch.load(text, &LoadOptions::default()).unwrap();
    assert_eq!(qemu(&config, 0).cpus, 4);
    assert_eq!(config.images[0].ssh.user, "admin");
    assert!(!config.images[0].generalize.enabled);
    assert_eq!(
        config.images[0].shutdown.command, "sudo poweroff",
        "a non-root user shuts down through sudo by default"
    );
}

#[test]
fn undefined_names_in_project_and_image_scopes() {
    let scratch = Scratch::new();
    let text = r#"
[project]
name = "{{ project.name }}"
output_dir = "{{ image.name }}"
[[image]]
name = "{{ image.name }}"
source = { qemu = { disk = "disk.img", append = "{{ project.nmae }}", kernel = "disk.img" } }
"#;
    let err = scratch.load(text, &LoadOptions::default()).unwrap_err();
    let found: Vec<(&str, Option<&str>)> = err
        .diagnostics()
        .iter()
        .map(|d| (d.message(), d.help()))
        .collect();
    let scopes = "`project.name` can be used anywhere but in `project.name`; `image.name` inside \
                  an image, but not in its `name`";
    assert_eq!(
        found,
        [
            (
                "`project.name` is not available in `project.name`",
                Some(scopes)
            ),
            (
                "`image.name` is not available in `project.output_dir`",
                Some(scopes)
            ),
            (
                "`image.name` is not available in `image[0].name`",
                Some(scopes)
            ),
            (
                "undefined variable `project.nmae` in `image[0].source.qemu.append`",
                Some("did you mean `project.name`?")
            ),
        ]
    );
}

#[test]
fn runaway_templates_are_stopped() {
    let scratch = Scratch::new();
    let text = r#"
[project]
name = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
[[image]]
name = "i"
source = { qemu = { disk = "disk.img" } }
"#;
    let err = scratch.load(text, &LoadOptions::default()).unwrap_err();
    let messages: Vec<&str> = err.diagnostics().iter().map(|d| d.message()).collect();
    assert_eq!(
        messages,
        ["cannot render `project.name`: engine ran out of fuel"]
    );
}
