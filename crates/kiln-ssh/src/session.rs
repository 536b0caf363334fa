//! An authenticated connection to a guest, and running commands on it.
//!
//! Owns [`Session`]: one SSH connection, used by many sequential steps, with one exec channel
//! per command. The core is [`Session::run`], which sends a command's input while streaming
//! its output, so that neither side can block the other, and which turns the exit status or
//! exit signal into a number. If a caller drops a command's future half way, the channel is
//! closed in the background, so the connection stays usable. Transfers are built on `run` in [`crate::transfer`].

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use russh::client::{self, Msg};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect, Sig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use crate::connect::Target;
use crate::error::SshError;
use crate::host_key::{HostKeyCheck, PublicKey};

/// Which output stream of a command a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// An authenticated SSH connection to a guest. Create one with [`crate::connect`].
pub struct Session {
    handle: client::Handle<HostKeyCheck>,
    target: Target,
    host_key: PublicKey,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("target", &self.target)
            .field("host_key", &self.host_key)
            .finish_non_exhaustive()
    }
}

/// What a command reads on its stdin.
pub(crate) enum Input<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// Chunks produced by a blocking task; the task's result says whether the stream is
    /// complete. EOF is sent only if it is.
    Chunks {
        chunks: mpsc::Receiver<Bytes>,
        producer: JoinHandle<Result<(), SshError>>,
    },
}

/// Where a command's output goes.
pub(crate) trait OutputSink {
    async fn output(&mut self, stream: OutputStream, data: Bytes);
}

struct CallbackSink<'a>(&'a mut (dyn FnMut(OutputStream, &[u8]) + Send));

impl OutputSink for CallbackSink<'_> {
    async fn output(&mut self, stream: OutputStream, data: Bytes) {
        (self.0)(stream, &data);
    }
}

impl Session {
    pub(crate) fn new(
        handle: client::Handle<HostKeyCheck>,
        target: Target,
        host_key: PublicKey,
    ) -> Self {
        Session {
            handle,
            target,
            host_key,
        }
    }

    /// The guest this session is connected to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The host key the server presented and the connect accepted: the pinned key, or under
    /// [`crate::HostKeyPolicy::AcceptNew`] whatever the guest had.
    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// The SHA-256 fingerprint of [`Session::host_key`] (`SHA256:…`), for manifests and logs.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key.fingerprint()
    }

    /// Runs a command line on the guest (as exec does: the user's shell runs it) and streams
    /// its output: `on_output` is called with each chunk as it arrives. `stdin` (if any) is
    /// sent, then EOF. Returns the exit status; a signal death maps to 128+signo if the server
    /// reports it, or an error if no status came.
    ///
    /// The call returns when the server closes the channel. OpenSSH does that only once
    /// nothing holds the command's stdout and stderr any more, so a command that starts a
    /// background process should redirect that process's output (`daemon >/dev/null 2>&1 &`).
    ///
    /// Dropping the future closes the channel, leaving the session usable; the command itself
    /// is not signalled (see `StopOnDrop` in the source for why).
    pub async fn exec(
        &self,
        command: &str,
        stdin: Option<&[u8]>,
        on_output: &mut (dyn FnMut(OutputStream, &[u8]) + Send),
    ) -> Result<u32, SshError> {
        let input = stdin.map_or(Input::Empty, Input::Bytes);
        self.run(command, input, &mut CallbackSink(on_output)).await
    }

    /// Ends the connection politely.
    pub async fn close(self) -> Result<(), SshError> {
        self.handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
            .map_err(|e| self.channel_error("disconnect", e))
    }

    /// Runs `command` with `input` on its stdin, passing its output to `sink`.
    pub(crate) async fn run(
        &self,
        command: &str,
        input: Input<'_>,
        sink: &mut impl OutputSink,
    ) -> Result<u32, SshError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| self.channel_error("open a session channel", e))?;
        let id = channel.id();
        let (mut read, write) = channel.split();
        let write = Arc::new(write);
        let mut guard = StopOnDrop {
            write: Some(Arc::clone(&write)),
        };
        // Command lines are not logged: they may carry secrets the user passed to a step.
        debug!(target = %self.target, channel = %id, "starting command");
        write
            .exec(true, command)
            .await
            .map_err(|e| self.channel_error("send the exec request", e))?;

        let writer = send_input(&write, input);
        let reader = read_output(&mut read, sink);
        tokio::pin!(writer, reader);
        let mut writer_done = false;
        let outcome = loop {
            tokio::select! {
                outcome = &mut reader => break outcome,
                sent = &mut writer, if !writer_done => {
                    writer_done = true;
                    match sent {
                        Ok(()) => {}
                        // No EOF is sent: the guard closes the channel, and the guest's tar
                        // fails on an archive without its end blocks instead of accepting a
                        // truncated one.
                        Err(InputError::Local(e)) => return Err(e),
                        // The channel is gone; the reader will see it close and report.
                        Err(InputError::Channel(e)) => {
                            debug!(channel = %id, error = %e, "command stopped taking input");
                        }
                    }
                }
            }
        };
        if outcome.closed {
            guard.disarm();
        }
        debug!(channel = %id, ?outcome, "command finished");
        match outcome {
            ReadOutcome {
                status: Some(status),
                ..
            } => Ok(status),
            ReadOutcome {
                signal: Some(signal),
                ..
            } => match signal_number(&signal) {
                Some(n) => Ok(128 + n),
                None => Err(SshError::KilledBySignal {
                    target: self.target.to_string(),
                    signal: signal_name(&signal),
                }),
            },
            ReadOutcome { refused: true, .. } => Err(SshError::ExecRefused {
                target: self.target.to_string(),
            }),
            _ => Err(SshError::NoExitStatus {
                target: self.target.to_string(),
            }),
        }
    }

    pub(crate) fn target_text(&self) -> String {
        self.target.to_string()
    }

    fn channel_error(&self, action: &'static str, e: russh::Error) -> SshError {
        SshError::Channel {
            target: self.target.to_string(),
            action,
            source: Box::new(e),
        }
    }
}

enum InputError {
    /// Producing the input failed locally; the command must not see EOF.
    Local(SshError),
    /// The channel would not take more input, usually because the command ended.
    Channel(russh::Error),
}

async fn send_input(write: &ChannelWriteHalf<Msg>, input: Input<'_>) -> Result<(), InputError> {
    match input {
        Input::Empty => {}
        Input::Bytes(data) => write.data(data).await.map_err(InputError::Channel)?,
        Input::Chunks {
            mut chunks,
            producer,
        } => {
            while let Some(chunk) = chunks.recv().await {
                write.data_bytes(chunk).await.map_err(InputError::Channel)?;
            }
            match producer.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(InputError::Local(e)),
                Err(join) => std::panic::resume_unwind(join.into_panic()),
            }
        }
    }
    write.eof().await.map_err(InputError::Channel)
}

#[derive(Debug, Default)]
struct ReadOutcome {
    status: Option<u32>,
    signal: Option<Sig>,
    /// The server answered the exec request with a failure.
    refused: bool,
    /// The server closed the channel; otherwise we still have to.
    closed: bool,
}

async fn read_output(read: &mut ChannelReadHalf, sink: &mut impl OutputSink) -> ReadOutcome {
    let mut outcome = ReadOutcome::default();
    let mut answered = false;
    while let Some(msg) = read.wait().await {
        match msg {
            ChannelMsg::Data { data } => sink.output(OutputStream::Stdout, data).await,
            // Extended data type 1 is stderr (RFC 4254 §5.2); there is no other in use.
            ChannelMsg::ExtendedData { data, ext: 1 } => {
                sink.output(OutputStream::Stderr, data).await;
            }
            ChannelMsg::ExitStatus { exit_status } => outcome.status = Some(exit_status),
            ChannelMsg::ExitSignal { signal_name, .. } => outcome.signal = Some(signal_name),
            ChannelMsg::Success => answered = true,
            // Servers need not close the channel after refusing, so do not wait for that.
            ChannelMsg::Failure if !answered => {
                outcome.refused = true;
                return outcome;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    outcome.closed = true;
    outcome
}

/// Closes the channel of a command that did not run to its end (its future was dropped, its
/// input failed locally, or the server refused it), in the background because `Drop` cannot
/// wait, so that the server releases the channel.
///
/// The command is not sent a signal first: with dropbear (2022.83), a `signal` request
/// followed by a close while the next command's channel is opening made dropbear close that
/// new channel without running it (reproduced in this crate's tests). After the close the
/// command runs on unobserved until it ends or next writes output (and gets SIGPIPE); kiln
/// tears the guest down on cancellation anyway.
struct StopOnDrop {
    write: Option<Arc<ChannelWriteHalf<Msg>>>,
}

impl StopOnDrop {
    fn disarm(&mut self) {
        self.write = None;
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let Some(write) = self.write.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // Best effort: the connection may already be gone.
            let _ = write.close().await;
        });
    }
}

/// Linux signal numbers for the names RFC 4254 §6.10 uses (without the "SIG" prefix).
fn signal_number(signal: &Sig) -> Option<u32> {
    Some(match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(name) => match name.as_str() {
            "TRAP" => 5,
            "BUS" => 7,
            "USR2" => 12,
            "STKFLT" => 16,
            "CHLD" => 17,
            "CONT" => 18,
            "STOP" => 19,
            "TSTP" => 20,
            "TTIN" => 21,
            "TTOU" => 22,
            "URG" => 23,
            "XCPU" => 24,
            "XFSZ" => 25,
            "VTALRM" => 26,
            "PROF" => 27,
            "WINCH" => 28,
            "IO" => 29,
            "PWR" => 30,
            "SYS" => 31,
            _ => return None,
        },
    })
}

fn signal_name(signal: &Sig) -> String {
    match signal {
        Sig::Custom(name) => name.clone(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_signals_map_to_linux_numbers() {
        assert_eq!(signal_number(&Sig::TERM), Some(15));
        assert_eq!(signal_number(&Sig::KILL), Some(9));
        assert_eq!(signal_number(&Sig::Custom("USR2".into())), Some(12));
        assert_eq!(signal_number(&Sig::Custom("NOPE".into())), None);
        assert_eq!(signal_name(&Sig::Custom("NOPE".into())), "NOPE");
    }
}
