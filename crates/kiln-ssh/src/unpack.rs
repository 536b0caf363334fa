//! Safe extraction of the tar stream a download receives from the guest.
//!
//! Owns deciding, entry by entry, whether an archive from the guest may be written into the
//! local destination, and writing it. The guest is not trusted: an entry must be a relative
//! path under the one name that was asked for, must not contain `..`, must not pass through a
//! symlink (whether the archive created it or it was already there), and hard links must
//! point inside the same tree. Only directories, regular files, symlinks and hard links are
//! created. This module is synchronous; it runs on a blocking thread and is fed by
//! [`ChunkReader`]. It must not know about SSH.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use tar::EntryType;
use tokio::sync::mpsc;

use crate::error::SshError;

/// Unpacks `archive` into `dest`, which must exist. Every entry must lie under `root_name`
/// (a single path component).
pub(crate) fn unpack_into(
    archive: impl Read,
    dest: &Path,
    root_name: &str,
) -> Result<(), SshError> {
    let mut archive = tar::Archive::new(archive);
    let mut directories: Vec<(PathBuf, u32)> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| SshError::io("read the archive for", dest, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| SshError::io("read the archive for", dest, e))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: String| SshError::UnsafeEntry {
            entry: name.clone(),
            reason,
        };
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
            // PAX metadata; the tar crate has already applied what it needs.
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| SshError::io("read the archive for", dest, e))?;
        let relative = checked_relative(&path, root_name).map_err(unsafe_entry)?;
        let target = dest.join(&relative);
        check_no_symlink_above(dest, &relative).map_err(unsafe_entry)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;

        match kind {
            EntryType::Directory => {
                if is_symlink(&target) {
                    return Err(unsafe_entry(
                        "a symlink already exists where this directory goes".to_owned(),
                    ));
                }
                fs::create_dir_all(&target)
                    .map_err(|e| SshError::io("create directory", &target, e))?;
                // Applied at the end: a read-only directory must still receive its contents.
                directories.push((target, mode));
            }
            EntryType::Regular | EntryType::Continuous => {
                make_room(&target)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| SshError::io("create", &target, e))?;
                io::copy(&mut entry, &mut file).map_err(|e| SshError::io("write", &target, e))?;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| SshError::io("set permissions of", &target, e))?;
                if let Ok(mtime) = entry.header().mtime() {
                    // Best effort: a wrong mtime is not worth failing a download for.
                    let _ = file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime));
                }
            }
            EntryType::Symlink => {
                let link = link_name(&entry, &name)?;
                make_room(&target)?;
                // The link's target is not checked: creating a link writes nothing through it,
                // and later entries are refused if they would pass through it.
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| SshError::io("create symlink", &target, e))?;
            }
            EntryType::Link => {
                let link = link_name(&entry, &name)?;
                let source_relative = checked_relative(&link, root_name)
                    .map_err(|reason| unsafe_entry(format!("hard link target: {reason}")))?;
                check_no_symlink_above(dest, &source_relative)
                    .map_err(|reason| unsafe_entry(format!("hard link target: {reason}")))?;
                let source = dest.join(&source_relative);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.is_file() => {}
                    _ => {
                        return Err(unsafe_entry(
                            "a hard link must point to a regular file unpacked before it"
                                .to_owned(),
                        ));
                    }
                }
                make_room(&target)?;
                fs::hard_link(&source, &target)
                    .map_err(|e| SshError::io("create hard link", &target, e))?;
            }
            other => {
                return Err(unsafe_entry(format!(
                    "entries of type {other:?} (devices, fifos, …) are not unpacked"
                )));
            }
        }
    }
    // Deepest first, so that restricting a parent does not block fixing its children.
    for (dir, mode) in directories.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| SshError::io("set permissions of", dir, e))?;
    }
    Ok(())
}

/// The entry's path as plain components, or why it is refused.
fn checked_relative(path: &Path, root_name: &str) -> Result<PathBuf, String> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path contains `..`".to_owned()),
            Component::RootDir | Component::Prefix(_) => {
                return Err("its path is absolute".to_owned());
            }
        }
    }
    match relative.components().next() {
        Some(Component::Normal(first)) if first == root_name => Ok(relative),
        _ => Err(format!(
            "it is not inside `{root_name}`, the path that was asked for"
        )),
    }
}

/// Refuses an entry if any directory between `dest` and it is a symlink, which would let the
/// entry land anywhere the link points.
fn check_no_symlink_above(dest: &Path, relative: &Path) -> Result<(), String> {
    let mut current = dest.to_path_buf();
    let mut parts = relative.components().peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        current.push(part);
        if is_symlink(&current) {
            let shown = current.strip_prefix(dest).unwrap_or(&current);
            return Err(format!(
                "it would pass through the symlink `{}`",
                shown.display()
            ));
        }
    }
    Ok(())
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Removes a file or symlink where a non-directory entry is about to go (so that we never
/// open an existing symlink for writing), and creates the parent directories.
fn make_room(target: &Path) -> Result<(), SshError> {
    match fs::symlink_metadata(target) {
        Ok(meta) if meta.is_dir() => {
            return Err(SshError::io(
                "replace",
                target,
                io::Error::new(io::ErrorKind::IsADirectory, "a directory is in the way"),
            ));
        }
        Ok(_) => fs::remove_file(target).map_err(|e| SshError::io("replace", target, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(SshError::io("inspect", target, e)),
    }
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| SshError::io("create directory", parent, e))?;
    }
    Ok(())
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>, name: &str) -> Result<PathBuf, SshError> {
    match entry.link_name() {
        Ok(Some(link)) => Ok(link.into_owned()),
        Ok(None) => Err(SshError::UnsafeEntry {
            entry: name.to_owned(),
            reason: "a link entry without a link target".to_owned(),
        }),
        Err(e) => Err(SshError::UnsafeEntry {
            entry: name.to_owned(),
            reason: format!("unreadable link target: {e}"),
        }),
    }
}

/// A blocking [`Read`] over chunks that an async task receives from the channel.
pub(crate) struct ChunkReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChunkReader {
    pub(crate) fn new(chunks: mpsc::Receiver<Bytes>) -> Self {
        ChunkReader {
            chunks,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                // The sender is gone: the stream has ended (cleanly or not; the caller knows
                // which from the command's exit status).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tar by hand, because `tar::Builder` rightly refuses to write the malicious
    /// paths these tests need.
    struct Crafted(Vec<u8>);

    impl Crafted {
        fn new() -> Self {
            Crafted(Vec::new())
        }

        fn entry(
            mut self,
            kind: EntryType,
            path: &str,
            link: &str,
            data: &[u8],
            mode: u32,
        ) -> Self {
            let mut header = tar::Header::new_ustar();
            {
                let old = header.as_old_mut();
                old.name[..path.len()].copy_from_slice(path.as_bytes());
                old.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_mtime(1_700_000_000);
            header.set_cksum();
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
            self
        }

        fn dir(self, path: &str, mode: u32) -> Self {
            self.entry(EntryType::Directory, path, "", b"", mode)
        }

        fn file(self, path: &str, data: &[u8], mode: u32) -> Self {
            self.entry(EntryType::Regular, path, "", data, mode)
        }

        fn symlink(self, path: &str, target: &str) -> Self {
            self.entry(EntryType::Symlink, path, target, b"", 0o777)
        }

        fn hard_link(self, path: &str, target: &str) -> Self {
            self.entry(EntryType::Link, path, target, b"", 0o644)
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    struct Scene {
        _top: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
    }

    /// A destination directory with a sibling directory that nothing may write into.
    fn scene() -> Scene {
        let top = tempfile::tempdir().unwrap();
        let dest = top.path().join("dest");
        let outside = top.path().join("outside");
        fs::create_dir(&dest).unwrap();
        fs::create_dir(&outside).unwrap();
        Scene {
            dest,
            outside,
            _top: top,
        }
    }

    fn assert_empty(dir: &Path) {
        let left: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    fn refused(tar: Vec<u8>, scene: &Scene) -> (String, String) {
        match unpack_into(&tar[..], &scene.dest, "root") {
            Err(SshError::UnsafeEntry { entry, reason }) => (entry, reason),
            other => panic!("expected an unsafe entry error, got {other:?}"),
        }
    }

    #[test]
    fn unpacks_directories_files_modes_and_symlinks() {
        let s = scene();
        let tar = Crafted::new()
            .dir("root/", 0o750)
            .dir("root/ro/", 0o555)
            .file("root/ro/script.sh", b"#!/bin/sh\n", 0o755)
            .file("root/secret", b"s", 0o600)
            .symlink("root/link", "ro/script.sh")
            .hard_link("root/hard", "root/secret")
            .finish();
        unpack_into(&tar[..], &s.dest, "root").unwrap();

        let mode = |p: &str| fs::metadata(s.dest.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("root"), 0o750);
        assert_eq!(mode("root/ro"), 0o555);
        assert_eq!(mode("root/ro/script.sh"), 0o755);
        assert_eq!(mode("root/secret"), 0o600);
        assert_eq!(
            fs::read(s.dest.join("root/ro/script.sh")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            fs::read_link(s.dest.join("root/link")).unwrap(),
            Path::new("ro/script.sh")
        );
        assert_eq!(fs::read(s.dest.join("root/hard")).unwrap(), b"s");
        // Let tempdir clean up.
        fs::set_permissions(s.dest.join("root/ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn refuses_parent_dir_components() {
        let s = scene();
        let tar = Crafted::new()
            .file("root/../../outside/evil", b"x", 0o644)
            .finish();
        let (entry, reason) = refused(tar, &s);
        assert_eq!(entry, "root/../../outside/evil");
        assert_eq!(reason, "its path contains `..`");
        assert_empty(&s.outside);
    }

    #[test]
    fn refuses_absolute_paths() {
        let s = scene();
        let evil = s.outside.join("evil");
        let tar = Crafted::new()
            .file(evil.to_str().unwrap(), b"x", 0o644)
            .finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(reason, "its path is absolute");
        assert_empty(&s.outside);
    }

    #[test]
    fn refuses_entries_outside_the_requested_name() {
        let s = scene();
        let tar = Crafted::new().file("other/file", b"x", 0o644).finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(
            reason,
            "it is not inside `root`, the path that was asked for"
        );
        assert_empty(&s.dest);
    }

    #[test]
    fn refuses_writing_through_a_symlink_from_the_archive() {
        let s = scene();
        let tar = Crafted::new()
            .dir("root/", 0o755)
            .symlink("root/escape", s.outside.to_str().unwrap())
            .file("root/escape/evil", b"x", 0o644)
            .finish();
        let (entry, reason) = refused(tar, &s);
        assert_eq!(entry, "root/escape/evil");
        assert_eq!(reason, "it would pass through the symlink `root/escape`");
        assert_empty(&s.outside);
    }

    #[test]
    fn refuses_writing_through_a_symlink_already_in_the_destination() {
        let s = scene();
        std::os::unix::fs::symlink(&s.outside, s.dest.join("root")).unwrap();
        let tar = Crafted::new().file("root/evil", b"x", 0o644).finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(reason, "it would pass through the symlink `root`");
        let tar = Crafted::new().dir("root/", 0o755).finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(reason, "a symlink already exists where this directory goes");
        assert_empty(&s.outside);
    }

    #[test]
    fn replaces_a_symlink_instead_of_writing_through_it() {
        let s = scene();
        let victim = s.outside.join("victim");
        fs::write(&victim, "original").unwrap();
        let tar = Crafted::new()
            .symlink("root", victim.to_str().unwrap())
            .file("root", b"new", 0o644)
            .finish();
        unpack_into(&tar[..], &s.dest, "root").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "original");
        assert_eq!(fs::read_to_string(s.dest.join("root")).unwrap(), "new");
    }

    #[test]
    fn refuses_hard_links_out_of_the_tree() {
        let s = scene();
        let victim = s.outside.join("victim");
        fs::write(&victim, "original").unwrap();
        let tar = Crafted::new()
            .hard_link("root", victim.to_str().unwrap())
            .finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(reason, "hard link target: its path is absolute");
        let tar = Crafted::new()
            .dir("root/", 0o755)
            .hard_link("root/h", "root/../../outside/victim")
            .finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(reason, "hard link target: its path contains `..`");
        assert!(!s.dest.join("root/h").exists());
    }

    #[test]
    fn refuses_device_entries() {
        let s = scene();
        let tar = Crafted::new()
            .entry(EntryType::Char, "root", "", b"", 0o644)
            .finish();
        let (_, reason) = refused(tar, &s);
        assert_eq!(
            reason,
            "entries of type Char (devices, fifos, …) are not unpacked"
        );
    }

    #[test]
    fn chunk_reader_reads_across_chunks() {
        let (tx, rx) = mpsc::channel(4);
        let tar = Crafted::new().file("root", b"hello", 0o644).finish();
        let s = scene();
        let dest = s.dest.clone();
        let reader = std::thread::spawn(move || unpack_into(ChunkReader::new(rx), &dest, "root"));
        for chunk in tar.chunks(100) {
            // The unpacker stops reading at the end-of-archive blocks, like `download`'s sink
            // this ignores that the rest is not wanted.
            let _ = tx.blocking_send(Bytes::copy_from_slice(chunk));
        }
        drop(tx);
        reader.join().unwrap().unwrap();
        assert_eq!(fs::read(s.dest.join("root")).unwrap(), b"hello");
    }
}
