//! Content digests of build inputs (files and directory trees).
//!
//! Owns how an input's identity is computed for step keys and manifests: SHA-256 of a file's
//! bytes, or for a directory of its sorted relative paths, modes and contents. Digests of big
//! files (base disks run to gigabytes) are remembered in the user cache, keyed by the file's
//! device, inode, size and modification time, so `plan` and `build` do not re-read an unchanged
//! disk every time. It reads files and writes only that cache.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Hex SHA-256 of a file, or of a directory tree (paths, modes, symlink targets, contents).
pub fn sha256_path(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        let mut hasher = Sha256::new();
        hash_tree(path, Path::new(""), &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    } else {
        sha256_file(path)
    }
}

/// Files smaller than this are hashed every time: reading them costs less than the cache.
const CACHE_MIN_SIZE: u64 = 16 << 20;

/// What identifies an unchanged file without reading it.
fn stamp(meta: &std::fs::Metadata) -> String {
    format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec()
    )
}

/// Like [`sha256_path`], remembering the digests of big files in `cache_file`.
pub fn sha256_path_cached(path: &Path, cache_file: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() || meta.len() < CACHE_MIN_SIZE {
        return sha256_path(path);
    }
    let key = std::fs::canonicalize(path)?;
    let stamp = stamp(&meta);
    let mut cache: BTreeMap<PathBuf, (String, String)> =
        crate::paths::read_cache(cache_file).unwrap_or_default();
    if let Some((seen, digest)) = cache.get(&key)
        && *seen == stamp
    {
        return Ok(digest.clone());
    }
    let digest = sha256_file(path)?;
    // The file may have changed while it was read; only a stable stamp is worth keeping.
    let after = std::fs::metadata(path).map(|m| self::stamp(&m)).ok();
    if after.as_ref() == Some(&stamp) {
        cache.insert(key, (stamp, digest.clone()));
        cache.retain(|p, _| p.exists());
        crate::paths::write_cache(cache_file, &cache);
    }
    Ok(digest)
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    sha256_file_until(path, &|| false)
}

/// [`sha256_file`] that stops with `ErrorKind::Interrupted` as soon as `stop()` says so
/// (checked every MiB), for hashing that a cancelled run must not wait for.
pub fn sha256_file_until(path: &Path, stop: &dyn Fn() -> bool) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        if stop() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped: the run was cancelled",
            ));
        }
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn hash_tree(root: &Path, rel: &Path, hasher: &mut Sha256) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for name in entries {
        let rel = rel.join(&name);
        let full = root.join(&rel);
        let meta = std::fs::symlink_metadata(&full)?;
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(meta.permissions().mode().to_le_bytes());
        if meta.is_dir() {
            hasher.update(b"d");
            hash_tree(root, &rel, hasher)?;
        } else if meta.file_type().is_symlink() {
            hasher.update(b"l");
            hasher.update(std::fs::read_link(&full)?.as_os_str().as_encoded_bytes());
        } else {
            hasher.update(b"f");
            hasher.update(sha256_file(&full)?.as_bytes());
        }
        hasher.update([0]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            sha256_path(&f).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn big_file_digests_are_cached_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache/digests.json");
        let big = dir.path().join("disk.img");
        let data = vec![7u8; CACHE_MIN_SIZE as usize];
        std::fs::write(&big, &data).unwrap();
        let first = sha256_path_cached(&big, &cache).unwrap();
        assert_eq!(first, sha256_file(&big).unwrap());
        assert!(cache.exists(), "a big file's digest is remembered");

        // A planted wrong digest for the same stamp proves the cache is what answers.
        let text = std::fs::read_to_string(&cache)
            .unwrap()
            .replace(&first, "cached");
        std::fs::write(&cache, text).unwrap();
        assert_eq!(sha256_path_cached(&big, &cache).unwrap(), "cached");

        // Any change to the file (here its size and mtime) means it is read again.
        let mut data = data;
        data.push(1);
        std::fs::write(&big, &data).unwrap();
        assert_eq!(
            sha256_path_cached(&big, &cache).unwrap(),
            sha256_file(&big).unwrap()
        );
    }

    #[test]
    fn small_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("digests.json");
        let f = dir.path().join("a");
        std::fs::write(&f, b"abc").unwrap();
        sha256_path_cached(&f, &cache).unwrap();
        assert!(!cache.exists());
    }

    #[test]
    fn tree_digest_sees_content_names_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"1").unwrap();
        let a = sha256_path(dir.path()).unwrap();
        std::fs::write(dir.path().join("sub/x"), b"2").unwrap();
        let b = sha256_path(dir.path()).unwrap();
        assert_ne!(a, b);
        std::fs::set_permissions(
            dir.path().join("sub/x"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        assert_ne!(b, sha256_path(dir.path()).unwrap());
        std::fs::rename(dir.path().join("sub/x"), dir.path().join("sub/y")).unwrap();
        assert_ne!(b, sha256_path(dir.path()).unwrap());
    }
}
