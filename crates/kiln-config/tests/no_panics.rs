//! Property-ish: whatever prefix of a good file is given, `load_str` returns, never panics.

use std::path::Path;

use kiln_config::LoadOptions;

#[test]
fn truncations_of_good_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good");
    let opts = LoadOptions::default();
    let mut checked = 0;
    for name in ["full.toml", "minimal.toml"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        for end in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
            let prefix = &text[..end];
            let result = kiln_config::load_str(Path::new(name), prefix, &dir, &opts);
            if let Err(err) = result {
                // Rendering must not panic either, and every error says something.
                assert!(!err.to_string().is_empty());
                assert!(!err.diagnostics().is_empty());
            }
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn single_line_deletions_of_good_files_never_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/good");
    let opts = LoadOptions::default();
    let text = std::fs::read_to_string(dir.join("full.toml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for skip in 0..lines.len() {
        let mutated: Vec<&str> = lines
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != skip)
            .map(|(_, l)| *l)
            .collect();
        let _ = kiln_config::load_str(Path::new("full.toml"), &mutated.join("\n"), &dir, &opts);
    }
}
