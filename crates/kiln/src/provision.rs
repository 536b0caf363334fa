//! Provisioners: running `shell`, `file` and `collect` steps on a guest over SSH.
//!
//! Owns how a model [`Step`] becomes commands and transfers on a [`Session`], how guest output
//! is split into lines and reported, and how a failure names the step, the command and the
//! exit status. It does not know which machine or provider is behind the session.

use std::sync::Arc;

use kiln_config::{ShellBody, ShellStep, Step, StepKind};
use kiln_ssh::{OutputStream, Session, SshError};

use crate::events::{Event, EventSink, Stream};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("command `{command}` exited with status {status}")]
    CommandFailed { command: String, status: u32 },
    #[error("step did not finish within {}", humantime::format_duration(*.limit))]
    Timeout { limit: std::time::Duration },
    #[error("read script {path}")]
    Script {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ssh(#[from] SshError),
}

/// Who is running, for output lines and events.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub image: String,
    pub step_id: String,
    pub events: Arc<dyn EventSink>,
    /// Unique per run; marks kiln's own lines in the guest's stderr.
    pub nonce: String,
}

pub async fn run(session: &Session, step: &Step, ctx: &StepContext) -> Result<(), StepError> {
    match &step.kind {
        StepKind::Shell(shell) => {
            let fut = run_shell(session, shell, ctx);
            match shell.timeout {
                Some(limit) => tokio::time::timeout(limit, fut)
                    .await
                    .map_err(|_| StepError::Timeout { limit })?,
                None => fut.await,
            }
        }
        StepKind::File(file) => Ok(session.upload(&file.from, &file.to).await?),
        StepKind::Collect(collect) => {
            let got = session.download(&collect.from, &collect.to).await?;
            ctx.events.emit(Event::Note {
                image: Some(ctx.image.clone()),
                message: format!("collected {} → {}", collect.from, got.display()),
            });
            Ok(())
        }
    }
}

/// The command line of every shell step: the script itself comes on stdin.
pub const RUN_SCRIPT_FROM_STDIN: &str = r#"sh -c 'eval "$(cat)"'"#;

/// Single-quote a string for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script a shell step runs: `set -e`, its environment, its working directory, then the
/// lines. An EXIT trap prints which line failed on a marked stderr line, because with `-e` the
/// shell stops at the failing command and nothing else would say which one it was.
fn shell_script(shell: &ShellStep, lines: &[String], nonce: &str) -> String {
    let mut script = String::from("set -e\n");
    script.push_str(&format!(
        "trap 'rc=$?; [ $rc -ne 0 ] && printf \"\\n{nonce}:%s:%s\\n\" \"${{__kiln_line:-0}}\" \"$rc\" >&2' EXIT\n"
    ));
    for (k, v) in &shell.env {
        script.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    if let Some(dir) = &shell.workdir {
        script.push_str(&format!("cd {}\n", shell_quote(dir)));
    }
    for (i, line) in lines.iter().enumerate() {
        script.push_str(&format!("__kiln_line={}\n{line}\n", i + 1));
    }
    script.push_str("__kiln_line=0\n");
    script
}

async fn run_shell(
    session: &Session,
    shell: &ShellStep,
    ctx: &StepContext,
) -> Result<(), StepError> {
    // A script file is uploaded and run as a program (its shebang counts); inline lines run in
    // one shell so that `cd` and variables carry from line to line.
    let (lines, uploaded) = match &shell.body {
        ShellBody::Inline(lines) => (lines.clone(), None),
        ShellBody::Script(path) => {
            let text = std::fs::read(path).map_err(|source| StepError::Script {
                path: path.clone(),
                source,
            })?;
            let remote = format!("/tmp/{}-{}.sh", ctx.nonce, ctx.step_id.replace('/', "-"));
            session.upload_bytes(&text, &remote, 0o755).await?;
            (vec![shell_quote(&remote)], Some(remote))
        }
    };
    let script = shell_script(shell, &lines, &ctx.nonce);
    // The script (with its `env` values, which may be secrets) travels on the exec channel's
    // stdin, never on a command line that every user of the guest can read in `ps`. It is
    // read whole before it runs (`$(cat)`), so a command in it that reads stdin (`cat > f`)
    // sees end-of-file instead of swallowing the lines after it.
    let mut command = String::from(RUN_SCRIPT_FROM_STDIN);
    if shell.sudo {
        command = format!("sudo -n {command}");
    }
    let marker = format!("{}:", ctx.nonce);
    let mut failed_line: Option<usize> = None;
    let mut out = LineSplitter::default();
    let mut err = LineSplitter::default();
    let status = {
        let mut on_output = |stream: OutputStream, chunk: &[u8]| {
            let (splitter, stream) = match stream {
                OutputStream::Stdout => (&mut out, Stream::Stdout),
                OutputStream::Stderr => (&mut err, Stream::Stderr),
            };
            for line in splitter.push(chunk) {
                emit_line(ctx, stream, line, &marker, &mut failed_line);
            }
        };
        session
            .exec(&command, Some(script.as_bytes()), &mut on_output)
            .await?
    };
    for (splitter, stream) in [(&mut out, Stream::Stdout), (&mut err, Stream::Stderr)] {
        if let Some(line) = splitter.finish() {
            emit_line(ctx, stream, line, &marker, &mut failed_line);
        }
    }
    if let Some(remote) = uploaded {
        let mut ignore = |_: OutputStream, _: &[u8]| {};
        // Best effort: the script is harmless if it stays, and the step's verdict is made.
        let _ = session
            .exec(
                &format!("rm -f {}", shell_quote(&remote)),
                None,
                &mut ignore,
            )
            .await;
    }
    if status == 0 {
        return Ok(());
    }
    let command = match (&shell.body, failed_line) {
        (ShellBody::Inline(lines), Some(n)) if n >= 1 && n <= lines.len() => lines[n - 1].clone(),
        (ShellBody::Script(path), _) => path.display().to_string(),
        (ShellBody::Inline(lines), _) => lines.join("; "),
    };
    Err(StepError::CommandFailed { command, status })
}

fn emit_line(
    ctx: &StepContext,
    stream: Stream,
    line: String,
    marker: &str,
    failed_line: &mut Option<usize>,
) {
    if stream == Stream::Stderr
        && let Some(rest) = line.strip_prefix(marker)
    {
        *failed_line = rest.split(':').next().and_then(|n| n.parse().ok());
        return;
    }
    if stream == Stream::Stderr && line.is_empty() {
        // The trap prints a newline before its marker so it starts a line of its own.
        return;
    }
    ctx.events.emit(Event::Output {
        image: ctx.image.clone(),
        step: ctx.step_id.clone(),
        stream,
        line,
    });
}

/// The longest line kept whole; a guest printing more without a newline (a progress bar
/// with `\r`, a binary dumped to stdout) gets it split into lines of this size, so memory
/// stays bounded whatever the guest prints.
const MAX_LINE: usize = 64 * 1024;

/// Splits a byte stream into lines, keeping a partial last line until more arrives.
#[derive(Debug, Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for piece in chunk.split_inclusive(|b| *b == b'\n') {
            if let Some(line) = piece.strip_suffix(b"\n") {
                self.take(line, &mut lines);
                lines.push(clean(&std::mem::take(&mut self.pending)));
            } else {
                self.take(piece, &mut lines);
            }
        }
        lines
    }

    /// Add bytes of an unfinished line, emitting full-size pieces as lines.
    fn take(&mut self, mut bytes: &[u8], lines: &mut Vec<String>) {
        while self.pending.len() + bytes.len() > MAX_LINE {
            let room = MAX_LINE - self.pending.len();
            self.pending.extend_from_slice(&bytes[..room]);
            bytes = &bytes[room..];
            lines.push(clean(&std::mem::take(&mut self.pending)));
        }
        self.pending.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty()).then(|| clean(&std::mem::take(&mut self.pending)))
    }
}

fn clean(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\r')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_keeps_partial_lines() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"a\nb"), vec!["a"]);
        assert_eq!(s.push(b"c\r\n\n"), vec!["bc", ""]);
        assert_eq!(s.push(b"tail"), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("tail"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn splitter_bounds_a_line_without_newline() {
        let mut s = LineSplitter::default();
        let mut total = 0;
        // 1 GiB would be the real case; 64 × 1 MiB proves the bound as well.
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..64 {
            for line in s.push(&chunk) {
                assert_eq!(line.len(), MAX_LINE);
                total += line.len();
            }
            assert!(s.pending.len() <= MAX_LINE, "pending stays within the cap");
        }
        assert_eq!(total + s.pending.len(), 64 << 20);
        let tail = s.push(b"y\nz");
        assert_eq!(
            tail.len(),
            2,
            "the pending piece, then the line a newline ends"
        );
        assert_eq!((tail[0].len(), tail[1].as_str()), (MAX_LINE, "y"));
        assert_eq!(s.finish().as_deref(), Some("z"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn script_has_env_workdir_and_line_markers() {
        let shell = ShellStep {
            body: ShellBody::Inline(vec!["echo a".into(), "false".into()]),
            written: vec!["echo a".into(), "false".into()],
            env: [("GREETING".to_string(), "hi 'there'".to_string())].into(),
            workdir: Some("/tmp".into()),
            sudo: false,
            timeout: None,
        };
        let ShellBody::Inline(lines) = &shell.body else {
            unreachable!()
        };
        let script = shell_script(&shell, lines, "kiln-n");
        assert!(script.starts_with("set -e\ntrap '"));
        assert!(script.contains("export GREETING='hi '\\''there'\\'''\n"));
        assert!(script.contains("cd '/tmp'\n__kiln_line=1\necho a\n__kiln_line=2\nfalse\n"));
    }

    #[test]
    fn marker_lines_are_swallowed_and_parsed() {
        let recorder = Arc::new(crate::events::Recorder::default());
        let ctx = StepContext {
            image: "tiny".into(),
            step_id: "provision/1".into(),
            events: recorder.clone(),
            nonce: "kiln-n".into(),
        };
        let mut failed = None;
        emit_line(
            &ctx,
            Stream::Stderr,
            "kiln-n:2:1".into(),
            "kiln-n:",
            &mut failed,
        );
        emit_line(
            &ctx,
            Stream::Stdout,
            "kiln-n:3:1".into(),
            "kiln-n:",
            &mut failed,
        );
        assert_eq!(failed, Some(2));
        assert_eq!(
            recorder.events().len(),
            1,
            "stdout is never taken for a marker"
        );
    }
}
