//! Quoting and splitting of guest paths for the guest's shell.
//!
//! Owns turning a path string into something a POSIX `sh` (dash, busybox ash, bash) reads back
//! as exactly one word, and splitting a guest path into the parent directory and the name
//! that `tar -C parent name` needs. It must not touch the network or the local file system.

use std::borrow::Cow;

use crate::error::SshError;

/// Quotes `word` so that a POSIX shell reads it back as exactly one word, unchanged.
///
/// Words made only of characters that no shell treats specially are returned as they are, so
/// that commands stay readable; anything else is wrapped in single quotes, inside which the
/// shell interprets nothing, with each `'` written as `'\''`.
pub fn shell_quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&b));
    if plain {
        return Cow::Borrowed(word);
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('\'');
    for c in word.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    Cow::Owned(quoted)
}

/// Quotes a path for use as a command argument. A relative path that starts with `-` would be
/// read as an option by `mkdir`, `tar` and `chmod`, and not every busybox applet honours `--`,
/// so such paths get a `./` in front instead.
pub(crate) fn quote_path(path: &str) -> String {
    if path.starts_with('-') {
        shell_quote(&format!("./{path}")).into_owned()
    } else {
        shell_quote(path).into_owned()
    }
}

/// A guest path split into the directory that contains it and its last component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteSplit {
    pub(crate) parent: String,
    pub(crate) name: String,
}

/// Splits a guest path that must name a file or directory (trailing slashes are ignored).
/// Relative paths are relative to the login directory, where exec commands start.
pub(crate) fn split_remote(remote: &str) -> Result<RemoteSplit, SshError> {
    let invalid = |reason| SshError::InvalidRemotePath {
        path: remote.to_owned(),
        reason,
    };
    check_plain(remote)?;
    let trimmed = remote.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(invalid(
            "it names the root directory, not a file or directory in it",
        ));
    }
    let (parent, name) = match trimmed.rsplit_once('/') {
        Some((parent, name)) => {
            let parent = parent.trim_end_matches('/');
            (if parent.is_empty() { "/" } else { parent }, name)
        }
        None => (".", trimmed),
    };
    if name == "." || name == ".." {
        return Err(invalid(
            "its last component must be a name, not `.` or `..`",
        ));
    }
    Ok(RemoteSplit {
        parent: parent.to_owned(),
        name: name.to_owned(),
    })
}

/// Where an upload of something called `local_name` goes: into `remote` when it ends with
/// `/`, otherwise exactly at `remote`.
pub(crate) fn upload_destination(remote: &str, local_name: &str) -> Result<RemoteSplit, SshError> {
    check_plain(remote)?;
    if remote.ends_with('/') {
        let dir = remote.trim_end_matches('/');
        Ok(RemoteSplit {
            parent: if dir.is_empty() { "/" } else { dir }.to_owned(),
            name: local_name.to_owned(),
        })
    } else {
        split_remote(remote)
    }
}

fn check_plain(remote: &str) -> Result<(), SshError> {
    let invalid = |reason| SshError::InvalidRemotePath {
        path: remote.to_owned(),
        reason,
    };
    if remote.is_empty() {
        return Err(invalid("it is empty"));
    }
    if remote.contains('\0') {
        return Err(invalid("it contains a NUL byte"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_as_they_are() {
        for word in ["ls", "/opt/app-1.2/bin", "a_b@c%d+e=f:g,h", "-x", "./x"] {
            assert_eq!(shell_quote(word), word);
        }
    }

    #[test]
    fn special_words_are_single_quoted() {
        let cases = [
            ("", "''"),
            ("a b", "'a b'"),
            ("$HOME", "'$HOME'"),
            ("`id`", "'`id`'"),
            ("a\"b", "'a\"b'"),
            ("it's", "'it'\\''s'"),
            ("'", "''\\'''"),
            ("line\nbreak", "'line\nbreak'"),
            ("*?[]~#&;|<>(){}!\\", "'*?[]~#&;|<>(){}!\\'"),
            ("ünïcode", "'ünïcode'"),
        ];
        for (word, quoted) in cases {
            assert_eq!(shell_quote(word), quoted, "quoting {word:?}");
        }
    }

    /// The real test of quoting: a shell must read every quoted word back unchanged.
    #[test]
    fn sh_reads_quoted_words_back_unchanged() {
        let words = [
            "",
            "plain",
            "two words",
            "it's",
            "''",
            "\\'\\",
            "$(echo pwned)",
            "`echo pwned`",
            "a\nb\tc",
            "*",
            "-n",
            "--",
            "%s\\n",
            "ünïcode ✓",
        ];
        for word in words {
            let script = format!("printf '%s' {}", shell_quote(word));
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{script}: {out:?}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word, "{script}");
        }
    }

    #[test]
    fn paths_starting_with_a_dash_are_not_options() {
        assert_eq!(quote_path("-rf"), "./-rf");
        assert_eq!(quote_path("-a b"), "'./-a b'");
        assert_eq!(quote_path("/x/-y"), "/x/-y");
    }

    fn split(parent: &str, name: &str) -> RemoteSplit {
        RemoteSplit {
            parent: parent.to_owned(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn split_remote_finds_parent_and_name() {
        assert_eq!(split_remote("/var/log").unwrap(), split("/var", "log"));
        assert_eq!(split_remote("/var/log/").unwrap(), split("/var", "log"));
        assert_eq!(split_remote("/etc").unwrap(), split("/", "etc"));
        assert_eq!(split_remote("out").unwrap(), split(".", "out"));
        assert_eq!(split_remote("a//b").unwrap(), split("a", "b"));
        assert_eq!(split_remote("a b/c d").unwrap(), split("a b", "c d"));
    }

    #[test]
    fn split_remote_rejects_paths_without_a_name() {
        for (path, reason) in [
            ("", "it is empty"),
            (
                "/",
                "it names the root directory, not a file or directory in it",
            ),
            (
                "//",
                "it names the root directory, not a file or directory in it",
            ),
            (".", "its last component must be a name, not `.` or `..`"),
            ("a/..", "its last component must be a name, not `.` or `..`"),
            ("a\0b", "it contains a NUL byte"),
        ] {
            let err = split_remote(path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("use remote path {path:?}: {reason}")
            );
        }
    }

    #[test]
    fn upload_destination_into_a_directory_or_exactly() {
        assert_eq!(
            upload_destination("/opt/", "app").unwrap(),
            split("/opt", "app")
        );
        assert_eq!(upload_destination("/", "app").unwrap(), split("/", "app"));
        assert_eq!(
            upload_destination("/opt/tool", "app").unwrap(),
            split("/opt", "tool")
        );
        assert_eq!(
            upload_destination("tool", "app").unwrap(),
            split(".", "tool")
        );
        assert!(upload_destination("", "app").is_err());
    }
}
