//! Building the tar stream an upload sends to the guest.
//!
//! Owns walking a local file or directory and writing it as a tar archive, one entry at a
//! time, into a bounded channel of chunks, so that only a few chunks of a large tree are in
//! memory at once. Entries are named `<root_name>/…`; modes, mtimes and symlinks are kept
//! as they are (symlinks are not followed below the top level). This module is synchronous;
//! it runs on a blocking thread. It must not know about SSH.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use tar::{EntryType, Header, HeaderMode};
use tokio::sync::mpsc;

use crate::error::SshError;

/// The size of the chunks handed to the channel: big enough to fill SSH packets, small
/// enough that a few in flight cost little memory.
pub(crate) const CHUNK_SIZE: usize = 32 * 1024;

/// Writes `local` (a file or a directory, followed if it is a symlink) as a tar archive whose
/// entries are named under `root_name`.
pub(crate) fn pack(local: &Path, root_name: &str, out: impl Write) -> Result<(), SshError> {
    let mut builder = tar::Builder::new(out);
    builder.mode(HeaderMode::Complete);
    let meta = fs::metadata(local).map_err(|e| SshError::io("read metadata of", local, e))?;
    append(&mut builder, local, Path::new(root_name), meta)?;
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|e| SshError::io("finish the archive of", local, e))?;
    Ok(())
}

fn append<W: Write>(
    builder: &mut tar::Builder<W>,
    local: &Path,
    name: &Path,
    meta: fs::Metadata,
) -> Result<(), SshError> {
    let write_err = |e| SshError::io("archive", local, e);
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(&meta, HeaderMode::Complete);
    let file_type = meta.file_type();
    if file_type.is_dir() {
        header.set_size(0);
        builder
            .append_data(&mut header, name, io::empty())
            .map_err(write_err)?;
        let mut children: Vec<(PathBuf, std::ffi::OsString)> = fs::read_dir(local)
            .map_err(|e| SshError::io("list directory", local, e))?
            .map(|entry| entry.map(|e| (e.path(), e.file_name())))
            .collect::<Result<_, _>>()
            .map_err(|e| SshError::io("list directory", local, e))?;
        // Sorted, so that the same tree always makes the same archive.
        children.sort();
        for (child, child_name) in children {
            let child_meta = fs::symlink_metadata(&child)
                .map_err(|e| SshError::io("read metadata of", &child, e))?;
            append(builder, &child, &name.join(child_name), child_meta)?;
        }
    } else if file_type.is_file() {
        let file = fs::File::open(local).map_err(|e| SshError::io("open", local, e))?;
        // The size in the header must match what we stream, so take it from the open file.
        let meta = file
            .metadata()
            .map_err(|e| SshError::io("read metadata of", local, e))?;
        header.set_metadata_in_mode(&meta, HeaderMode::Complete);
        builder
            .append_data(&mut header, name, io::Read::take(file, meta.len()))
            .map_err(write_err)?;
    } else if file_type.is_symlink() {
        let target = fs::read_link(local).map_err(|e| SshError::io("read symlink", local, e))?;
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        builder
            .append_link(&mut header, name, &target)
            .map_err(write_err)?;
    } else {
        return Err(SshError::InvalidLocalPath {
            path: local.to_path_buf(),
            reason: "it is a special file (fifo, socket or device); only regular files, \
                     directories and symlinks can be uploaded",
        });
    }
    Ok(())
}

/// A blocking [`Write`] that hands fixed-size chunks to an async task through a bounded
/// channel. Writing blocks while the channel is full, which is what keeps memory bounded.
pub(crate) struct ChunkWriter {
    chunks: mpsc::Sender<Bytes>,
    buffer: BytesMut,
}

impl ChunkWriter {
    pub(crate) fn new(chunks: mpsc::Sender<Bytes>) -> Self {
        ChunkWriter {
            chunks,
            buffer: BytesMut::with_capacity(CHUNK_SIZE),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = self.buffer.split().freeze();
        self.buffer.reserve(CHUNK_SIZE);
        self.chunks
            .blocking_send(chunk)
            // The receiving side stopped, because the guest command ended or failed; the
            // caller reports that, not this.
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the transfer was stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK_SIZE - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn packs_a_tree_under_the_root_name() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("b/c")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        fs::write(src.join("b/c/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("b/c/run.sh"), fs::Permissions::from_mode(0o751)).unwrap();
        std::os::unix::fs::symlink("a.txt", src.join("link")).unwrap();

        let mut out = Vec::new();
        pack(&src, "dest", &mut out).unwrap();

        let mut archive = tar::Archive::new(&out[..]);
        let listing: Vec<(String, EntryType, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.entry_type(),
                    h.mode().unwrap() & 0o777,
                )
            })
            .collect();
        let names: Vec<&str> = listing.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "dest",
                "dest/a.txt",
                "dest/b",
                "dest/b/c",
                "dest/b/c/run.sh",
                "dest/link"
            ]
        );
        assert_eq!(listing[4].1, EntryType::Regular);
        assert_eq!(listing[4].2, 0o751);
        assert_eq!(listing[5].1, EntryType::Symlink);
    }

    #[test]
    fn refuses_special_files() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let err = pack(dir.path(), "d", Vec::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "upload {}: it is a special file (fifo, socket or device); only regular files, \
                 directories and symlinks can be uploaded",
                fifo.display()
            )
        );
    }

    #[test]
    fn chunk_writer_sends_bounded_chunks_in_order() {
        let (tx, mut rx) = mpsc::channel(2);
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = ChunkWriter::new(tx);
            w.write_all(&data).unwrap();
            w.flush().unwrap();
        });
        let mut got = Vec::new();
        while let Some(chunk) = rx.blocking_recv() {
            assert!(chunk.len() <= CHUNK_SIZE);
            got.extend_from_slice(&chunk);
        }
        writer.join().unwrap();
        assert_eq!(got, expected);
    }
}
