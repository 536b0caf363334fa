//! Where kiln keeps things outside a project: the per-user cache.
//!
//! Owns path resolution (`KILN_CACHE_DIR`, then `$XDG_CACHE_HOME/kiln`, then `~/.cache/kiln`)
//! and how cache files are read and written. A cache only saves work: a missing, unreadable or
//! unwritable one is never an error, and concurrent kiln processes must not tear each other's
//! writes (each writes its own temporary file and renames it into place).

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The cache file's contents, or `None` if it is missing or unreadable.
pub fn read_cache<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Replace the cache file, best effort.
pub fn write_cache(path: &Path, value: &impl Serialize) {
    let Ok(text) = serde_json::to_string_pretty(value) else {
        return;
    };
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("kiln");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("kiln"),
        None => std::env::temp_dir().join("kiln-cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trip_and_missing_or_garbled_files_read_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/cache.json");
        assert_eq!(read_cache::<Vec<u32>>(&path), None);
        write_cache(&path, &vec![1u32, 2]);
        assert_eq!(read_cache::<Vec<u32>>(&path), Some(vec![1, 2]));
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(read_cache::<Vec<u32>>(&path), None);
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }
}
