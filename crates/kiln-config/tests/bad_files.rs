//! Every file in `tests/bad/` has one mistake; the whole rendered error is a snapshot.
//!
//! A file may start with directives for the loader, one per line:
//! `# kiln-test: var KEY=VALUE`, `# kiln-test: var-file PATH` (relative to the crate) and
//! `# kiln-test: env KEY=VALUE`.

use std::path::Path;

use kiln_config::LoadOptions;

fn options(text: &str) -> LoadOptions {
    let mut opts = LoadOptions::default();
    for line in text.lines() {
        let Some(directive) = line.strip_prefix("# kiln-test: ") else {
            continue;
        };
        let (kind, arg) = directive
            .split_once(' ')
            .expect("directive with an argument");
        let pair = || {
            let (k, v) = arg.split_once('=').expect("KEY=VALUE");
            (k.to_owned(), v.to_owned())
        };
        match kind {
            "var" => opts.vars.push(pair()),
            "var-file" => opts.var_files.push(arg.into()),
            "env" => {
                let (k, v) = pair();
                opts.env.insert(k, v);
            }
            other => panic!("unknown directive {other}"),
        }
    }
    opts
}

#[test]
fn bad_files() {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bad_dir = manifest_dir.join("tests/bad");
    let mut settings = insta::Settings::clone_current();
    // Missing files are named by absolute path; keep snapshots independent of the checkout.
    settings.add_filter(&regex_escape(&bad_dir.display().to_string()), "[BAD]");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::glob!("bad/*.toml", |path| {
            let relative = path.strip_prefix(manifest_dir).expect("inside the crate");
            let text = std::fs::read_to_string(path).expect("readable");
            let result = kiln_config::load(relative, &options(&text));
            let err = match result {
                Ok(_) => panic!("{} loaded without an error", relative.display()),
                Err(err) => err,
            };
            assert!(!err.diagnostics().is_empty());
            insta::assert_snapshot!(err.to_string());
        });
    });
}

#[test]
fn there_are_enough_bad_files() {
    let count = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad"))
        .expect("tests/bad")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "toml"))
        })
        .count();
    assert!(count >= 16, "only {count} bad files");
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
