//! Arbitrary bytes, as UTF-8 when valid, into `kiln_config::load_str`: it must return (`Ok`
//! or `Err`) without panicking, and an error must render.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln_config::LoadOptions;
use libfuzzer_sys::fuzz_target;

/// A directory with the files the seeds refer to, so that inputs get past the existence
/// checks into format detection and the rest of validation.
fn base_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("kiln-fuzz-fixtures");
        std::fs::create_dir_all(dir.join("files")).expect("fuzz base dir");
        for (name, content) in [
            ("base.qcow2", &b"QFI\xfb\0\0\0\x03"[..]),
            ("base.raw", b"raw"),
            ("vmlinuz", b"kernel"),
            ("initrd.gz", b"initrd"),
            ("setup.sh", b"#!/bin/sh\n"),
            ("files/motd", b"hello\n"),
        ] {
            std::fs::write(dir.join(name), content).expect("fuzz fixture");
        }
        dir
    })
}

fn options() -> &'static LoadOptions {
    static OPTS: OnceLock<LoadOptions> = OnceLock::new();
    OPTS.get_or_init(|| LoadOptions {
        vars: Vec::new(),
        var_files: Vec::new(),
        env: BTreeMap::from([
            ("HOME".to_owned(), "/home/kiln".to_owned()),
            ("USER".to_owned(), "kiln".to_owned()),
        ]),
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = kiln_config::load_str(Path::new("kiln.toml"), text, base_dir(), options()) {
        assert!(!err.diagnostics().is_empty());
        let _ = err.to_string();
    }
});
