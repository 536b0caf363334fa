//! Moving files to and from a guest over exec channels.
//!
//! Owns the guest-side command lines of uploads and downloads and the plumbing between them
//! and [`crate::pack`] / [`crate::unpack`]. Guests may have neither scp nor an sftp server
//! (the busybox + dropbear guest has neither), so everything goes through `sh`, `tar`, `cat`,
//! `mkdir` and `chmod`, using only options that both GNU tar and busybox tar understand.
//! Archives are streamed in bounded chunks in both directions; a large tree is never held in
//! memory.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::{SshError, TransferDirection};
use crate::pack::{self, ChunkWriter};
use crate::remote_path::{self, RemoteSplit, quote_path};
use crate::session::{Input, OutputSink, OutputStream, Session};
use crate::unpack::{self, ChunkReader};

/// How many chunks may wait between the blocking tar thread and the channel.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The exit status the download command uses for "no such path". Neither tar exits with it.
const NOT_FOUND_STATUS: u32 = 44;

/// Enough of a failing command's stderr to explain it, without letting a chatty command grow
/// an error message without bound.
const STDERR_LIMIT: usize = 16 * 1024;

impl Session {
    /// Uploads a local file or directory (recursively) to `remote`.
    ///
    /// If `remote` ends with `/`, the source goes into that directory under its own name;
    /// otherwise `remote` is the exact destination path. Parent directories are created and
    /// mode bits are kept; ownership becomes the login user's. The tar archive is built while
    /// it is sent, into `mkdir -p … && tar -x … -C …` on the guest.
    pub async fn upload(&self, local: &Path, remote: &str) -> Result<(), SshError> {
        let local_name = local
            .file_name()
            .ok_or(SshError::InvalidLocalPath {
                path: local.to_path_buf(),
                reason: "it has no file name",
            })?
            .to_str()
            .ok_or(SshError::InvalidLocalPath {
                path: local.to_path_buf(),
                reason: "its file name is not UTF-8",
            })?;
        let dest = remote_path::upload_destination(remote, local_name)?;
        // Fail early, with the local path in the message, rather than from inside the stream.
        tokio::fs::metadata(local)
            .await
            .map_err(|e| SshError::io("read metadata of", local, e))?;

        let parent = quote_path(&dest.parent);
        // -o: files belong to whoever runs tar, not to our local uid. -p: keep the modes even
        // when tar does not run as root (GNU tar would apply the umask).
        let command = format!("mkdir -p {parent} && tar -x -o -p -f - -C {parent}");
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let local_owned = local.to_path_buf();
        let root_name = dest.name.clone();
        let producer = tokio::task::spawn_blocking(move || {
            pack::pack(&local_owned, &root_name, ChunkWriter::new(tx))
        });
        let input = Input::Chunks {
            chunks: rx,
            producer,
        };
        let mut sink = TransferSink::discard_stdout();
        let status = self.run(&command, input, &mut sink).await?;
        self.check_status(TransferDirection::Upload, &dest, status, &sink)
    }

    /// Writes `data` to the guest file `remote` (creating parent directories) with `mode`,
    /// for example a script to run next.
    pub async fn upload_bytes(&self, data: &[u8], remote: &str, mode: u32) -> Result<(), SshError> {
        if remote.ends_with('/') {
            return Err(SshError::InvalidRemotePath {
                path: remote.to_owned(),
                reason: "it ends with `/` but must name a file",
            });
        }
        let dest = remote_path::split_remote(remote)?;
        let path = quote_path(remote);
        // chmod before writing, so the content never sits there with looser permissions than
        // asked for.
        let command = format!(
            "mkdir -p {parent} && : > {path} && chmod {mode:o} {path} && cat > {path}",
            parent = quote_path(&dest.parent),
            mode = mode & 0o7777,
        );
        let mut sink = TransferSink::discard_stdout();
        let status = self.run(&command, Input::Bytes(data), &mut sink).await?;
        self.check_status(TransferDirection::Upload, &dest, status, &sink)
    }

    /// Downloads a guest file or directory into the local directory `local_dir` (created if
    /// missing), keeping its name, and returns the local path of what was downloaded.
    ///
    /// The guest runs `tar -c -C parent name`; the archive is unpacked locally as it arrives.
    /// The guest is not trusted: entries that would land outside `local_dir/name` (absolute
    /// paths, `..`, paths through symlinks, hard links out of the tree) and device or fifo
    /// entries are refused with [`SshError::UnsafeEntry`]. If `remote` itself is a symlink,
    /// the symlink is downloaded, not what it points to. A missing remote path is
    /// [`SshError::RemoteNotFound`].
    pub async fn download(&self, remote: &str, local_dir: &Path) -> Result<PathBuf, SshError> {
        let source = remote_path::split_remote(remote)?;
        tokio::fs::create_dir_all(local_dir)
            .await
            .map_err(|e| SshError::io("create directory", local_dir, e))?;

        let full = quote_path(remote.trim_end_matches('/'));
        let command = format!(
            "if [ -e {full} ] || [ -L {full} ]; then tar -c -f - -C {parent} {name}; \
             else echo 'no such file or directory' >&2; exit {NOT_FOUND_STATUS}; fi",
            parent = quote_path(&source.parent),
            name = quote_path(&source.name),
        );
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let dest = local_dir.to_path_buf();
        let root_name = source.name.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            unpack::unpack_into(ChunkReader::new(rx), &dest, &root_name)
        });
        let mut sink = TransferSink::forward_stdout(tx);
        let status = self.run(&command, Input::Empty, &mut sink).await;
        // Closing the stream lets the unpacker finish (or fail on a truncated archive).
        sink.stdout = None;
        let unpacked = match unpacker.await {
            Ok(result) => result,
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        };
        let status = status?;

        // An unsafe entry is the most important thing to report, whatever the guest did.
        if let Err(e @ SshError::UnsafeEntry { .. }) = unpacked {
            return Err(e);
        }
        if status == NOT_FOUND_STATUS {
            return Err(SshError::RemoteNotFound {
                target: self.target_text(),
                path: remote.to_owned(),
            });
        }
        self.check_status(TransferDirection::Download, &source, status, &sink)?;
        unpacked?;
        Ok(local_dir.join(&source.name))
    }

    fn check_status(
        &self,
        direction: TransferDirection,
        dest: &RemoteSplit,
        status: u32,
        sink: &TransferSink,
    ) -> Result<(), SshError> {
        if status == 0 {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&sink.stderr);
        let stderr = stderr.trim();
        let message = if stderr.is_empty() {
            format!("the guest command exited with status {status}")
        } else {
            format!("the guest command exited with status {status}: {stderr}")
        };
        Err(SshError::Transfer {
            direction,
            target: self.target_text(),
            path: display_path(dest),
            message,
        })
    }
}

fn display_path(split: &RemoteSplit) -> String {
    match split.parent.as_str() {
        "." => split.name.clone(),
        "/" => format!("/{}", split.name),
        parent => format!("{parent}/{}", split.name),
    }
}

/// Collects stderr (bounded) for error messages, and forwards stdout to the unpacker or
/// drops it.
struct TransferSink {
    stdout: Option<mpsc::Sender<Bytes>>,
    stderr: Vec<u8>,
}

impl TransferSink {
    fn discard_stdout() -> Self {
        TransferSink {
            stdout: None,
            stderr: Vec::new(),
        }
    }

    fn forward_stdout(tx: mpsc::Sender<Bytes>) -> Self {
        TransferSink {
            stdout: Some(tx),
            stderr: Vec::new(),
        }
    }
}

impl OutputSink for TransferSink {
    async fn output(&mut self, stream: OutputStream, data: Bytes) {
        match stream {
            OutputStream::Stdout => {
                if let Some(tx) = &self.stdout
                    && tx.send(data).await.is_err()
                {
                    // The unpacker stopped: it reached the end of the archive (tar pads
                    // the stream after that) or failed, which `download` reports. Either
                    // way the rest is not needed.
                    self.stdout = None;
                }
            }
            OutputStream::Stderr => {
                let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
                self.stderr.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }
}
