//! The real binary, no guest needed: help, plan, validation errors, init, refusals.
//! Outputs people read are insta snapshots (crates/kiln/tests/snapshots/).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{KILN, text};

fn kiln(dir: &Path, args: &[&str]) -> Output {
    Command::new(KILN)
        .current_dir(dir)
        .args(args)
        .env("NO_COLOR", "1")
        .env("COLUMNS", "100")
        .env_remove("KILN_LOG")
        .output()
        .unwrap()
}

fn project(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("kiln.toml"), toml).unwrap();
    std::fs::write(dir.path().join("base.qcow2"), b"QFI\xfb not really a disk").unwrap();
    std::fs::write(dir.path().join("motd"), b"hello\n").unwrap();
    dir
}

const GOOD: &str = r#"[project]
name = "demo"

[vars]
who = "world"

[[image]]
name = "web"
source = { qemu = { disk = "base.qcow2", memory = 256 } }
provision = [
  { file = { from = "motd", to = "/etc/motd" } },
  { shell = { inline = ["echo hello {{ who }}", "touch /etc/done"] } },
  { collect = { from = "/var/log/build.log", to = "logs" } },
]
test = [{ shell = { name = "done marker", inline = ["test -f /etc/done"] } }]

[[image]]
name = "db"
source = { qemu = { disk = "base.qcow2", accelerator = "tcg" } }
output = { format = "raw" }
"#;

#[test]
fn help_for_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["init", "--help"],
        vec!["validate", "--help"],
        vec!["plan", "--help"],
        vec!["build", "--help"],
        vec!["gc", "--help"],
        vec!["status", "--help"],
    ] {
        let out = kiln(dir.path(), &args);
        assert!(out.status.success(), "{args:?}");
        insta::assert_snapshot!(format!("help {}", args.join(" ")), text(&out.stdout));
    }
}

#[test]
fn plan_lists_steps_and_cleanups_in_order() {
    let dir = project(GOOD);
    let out = kiln(dir.path(), &["plan"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn plan_json_has_stable_ids_and_keys_that_follow_inputs() {
    let dir = project(GOOD);
    let plan = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&kiln(dir, &["plan", "--json", "web"]).stdout).unwrap()
    };
    let first = plan(dir.path());
    let ids: Vec<&str> = first["images"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "prepare",
            "launch",
            "connect",
            "provision/1",
            "provision/2",
            "provision/3",
            "test/1",
            "generalize",
            "shutdown",
            "capture",
            "manifest"
        ]
    );
    let keys = |p: &serde_json::Value| -> Vec<String> {
        p["images"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        keys(&first),
        keys(&plan(dir.path())),
        "keys are deterministic"
    );

    // Changing an uploaded file changes the key of that step and every later one, not earlier.
    std::fs::write(dir.path().join("motd"), b"changed\n").unwrap();
    let second = keys(&plan(dir.path()));
    let first = keys(&first);
    assert_eq!(first[..3], second[..3]);
    assert!(first[3..].iter().zip(&second[3..]).all(|(a, b)| a != b));
}

#[test]
fn unknown_image_on_the_command_line_suggests() {
    let dir = project(GOOD);
    let out = kiln(dir.path(), &["plan", "wbe"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: unknown image `wbe` (did you mean `web`?)\n"
    );
}

#[test]
fn validate_ok_and_error_messages() {
    let dir = project(GOOD);
    let out = kiln(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "kiln.toml: ok (2 images)\n");

    let bad = project(&GOOD.replace("memory = 256", "memroy = 256"));
    let out = kiln(bad.path(), &["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    insta::assert_snapshot!("validate unknown key", text(&out.stderr));

    let out = kiln(dir.path(), &["validate", "--var", "woh=x"]);
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("validate unknown var", text(&out.stderr));

    let out = kiln(dir.path(), &["-C", "nowhere", "validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: directory nowhere does not exist\n"
    );
}

#[test]
fn invalid_config_changes_nothing() {
    let dir = project(&GOOD.replace("name = \"db\"", "name = \"web\""));
    let out = kiln(dir.path(), &["build"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!dir.path().join(".kiln").exists(), "no state written");
    assert!(!dir.path().join("output").exists(), "no output written");
}

#[test]
fn existing_output_is_refused_before_anything_starts() {
    let dir = project(GOOD);
    std::fs::create_dir_all(dir.path().join("output/web")).unwrap();
    std::fs::write(dir.path().join("output/web/web.qcow2"), b"precious").unwrap();
    let out = kiln(dir.path(), &["build", "web"]);
    assert_eq!(out.status.code(), Some(2));
    let expected = format!(
        "error: output {} already exists (use --force to replace it)\n",
        dir.path().join("output/web/web.qcow2").display()
    );
    assert_eq!(text(&out.stderr), expected);
    assert_eq!(
        std::fs::read(dir.path().join("output/web/web.qcow2")).unwrap(),
        b"precious"
    );
    assert!(!dir.path().join(".kiln").exists());
}

#[test]
fn init_writes_a_config_that_validates_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.img"), b"raw bytes").unwrap();
    let out = kiln(
        dir.path(),
        &["init", "--disk", "disk.img", "--name", "demo"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kiln(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = kiln(dir.path(), &["init"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: kiln.toml already exists (use --force to overwrite it)\n"
    );
}

#[test]
fn gc_and_status_on_a_fresh_project() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(dir.path(), &["gc"]);
    assert!(out.status.success());
    assert_eq!(text(&out.stdout), "nothing to remove\n");
    let out = kiln(dir.path(), &["status"]);
    assert_eq!(text(&out.stdout), "no live or leaked resources\n");
    let out = kiln(dir.path(), &["--json", "status"]);
    assert_eq!(text(&out.stdout), "[]\n");
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = kiln(dir.path(), &["build", "--on-error", "maybe"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kiln(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = kiln(dir.path(), &["validate", "--var", "novalue"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("expected NAME=VALUE, got `novalue`"));
}

/// Write a dead run's journal by hand: a run record, then `lines` as they are.
fn journal(dir: &Path, run: &str, lines: &[String]) -> std::path::PathBuf {
    let jdir = dir.join(".kiln/journal");
    std::fs::create_dir_all(&jdir).unwrap();
    let path = jdir.join(format!("{run}.jsonl"));
    let mut text = format!(
        "{{\"op\":\"run\",\"schema\":1,\"run_id\":\"{run}\",\"pid\":1,\"command\":\"build\",\"kiln_version\":\"0.1.0\",\"at\":\"2026-12-01T00:00:00Z\"}}\n"
    );
    for l in lines {
        text.push_str(l);
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn create_dir_record(rid: u64, path: &Path) -> String {
    format!(
        "{{\"op\":\"create\",\"rid\":{rid},\"resource\":{{\"provider\":\"local\",\"kind\":\"dir\",\"id\":\"{}\",\"image\":\"web\"}},\"at\":\"2026-12-01T00:00:01Z\"}}\n",
        path.display()
    )
}

#[test]
fn damaged_journals_are_reported_and_what_they_name_is_still_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let (torn_dir, garbled_dir, newer_dir) = (p.join("torn"), p.join("garbled"), p.join("newer"));
    for d in [&torn_dir, &garbled_dir, &newer_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // A torn last line: the record never finished, so nothing it named was created.
    journal(
        p,
        "20261201T000001Z-aaaaaa",
        &[
            create_dir_record(1, &torn_dir),
            "{\"op\":\"create\",\"rid\":2,\"res".into(),
        ],
    );
    // Garbage and an unknown record kind in the middle.
    let garbled = journal(
        p,
        "20261201T000002Z-bbbbbb",
        &[
            "\u{1}\u{2} not json\n".into(),
            "{\"op\":\"teleport\",\"rid\":7}\n".into(),
            create_dir_record(1, &garbled_dir),
        ],
    );
    // A newer kiln's journal.
    let newer = journal(
        p,
        "20261201T000003Z-cccccc",
        &[create_dir_record(1, &newer_dir)],
    );
    let text_newer = std::fs::read_to_string(&newer).unwrap();
    std::fs::write(&newer, text_newer.replace("\"schema\":1", "\"schema\":9")).unwrap();

    let status = kiln(p, &["status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    let stderr = text(&status.stderr);
    // Relative to where kiln runs, as people typed nothing else.
    let journals = Path::new(".kiln/journal");
    assert!(
        stderr.contains(&format!(
            "warning: skipped a damaged journal line: {}/20261201T000001Z-aaaaaa.jsonl line 3: the line ends in the middle of a record (a torn record: its write never finished, so what it announced was never created)",
            journals.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: skipped a damaged journal line: {}/20261201T000002Z-bbbbbb.jsonl line 2: not a JSON record",
            journals.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "warning: skipped a damaged journal line: {}/20261201T000002Z-bbbbbb.jsonl line 3: unknown record kind `teleport` (written by a newer kiln?)",
            journals.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: run 20261201T000003Z-cccccc was journaled by a newer kiln (journal schema 9; this kiln understands 1); what it lists may be incomplete"),
        "{stderr}"
    );
    let stdout = text(&status.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");

    let gc = kiln(p, &["gc"]);
    let out = text(&gc.stdout);
    let err = text(&gc.stderr);
    assert_eq!(gc.status.code(), Some(0), "{out}{err}");
    assert!(!torn_dir.exists() && !garbled_dir.exists(), "{out}");
    assert!(
        newer_dir.exists(),
        "a newer kiln's resources are left alone"
    );
    assert!(
        err.contains("run 20261201T000003Z-cccccc was journaled by a newer kiln (journal schema 9; this kiln understands 1): left alone, run `kiln gc` with that version"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "kept the journal of run 20261201T000002Z-bbbbbb for inspection: a damaged line may have named a resource; delete {} once you are sure nothing of it is left",
            journals.join(garbled.file_name().unwrap()).display()
        )),
        "{err}"
    );
    // The torn journal is forgotten; the garbled one and the newer one stay.
    let mut left: Vec<String> = std::fs::read_dir(p.join(journals))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "20261201T000002Z-bbbbbb.jsonl",
            "20261201T000003Z-cccccc.jsonl"
        ]
    );
}

#[test]
fn titles_and_plans_show_scripts_as_written_not_interpolated() {
    let dir = project(
        r#"[project]
name = "demo"

[vars]
token = "s3cr3t-value"

[[image]]
name = "web"
source = { qemu = { disk = "base.qcow2" } }
provision = [{ shell = { inline = ["curl -H 'Authorization: {{ token }}' https://example.invalid/"], env = { TOKEN = "{{ token }}" } } }]
"#,
    );
    let plan = kiln(dir.path(), &["plan"]);
    let out = text(&plan.stdout);
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert!(
        out.contains("shell: curl -H 'Authorization: {{ token }}' https://example.invalid/"),
        "{out}"
    );
    let json = text(&kiln(dir.path(), &["plan", "--json"]).stdout);
    assert!(
        !out.contains("s3cr3t") && !json.contains("s3cr3t"),
        "{out}{json}"
    );
}

#[test]
fn step_keys_do_not_depend_on_where_the_checkout_lives() {
    let keys = |dir: &Path| -> Vec<String> {
        let out = kiln(dir, &["plan", "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        plan["images"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["key"].as_str().unwrap().to_string())
            .collect()
    };
    let a = project(GOOD);
    let b = project(GOOD);
    assert_ne!(a.path(), b.path());
    assert_eq!(keys(a.path()), keys(b.path()));
}
