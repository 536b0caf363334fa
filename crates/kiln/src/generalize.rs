//! Generalizing a guest before it is captured: removing what the build put there.
//!
//! Owns the guest-side script of the `generalize` bake step: kiln's own key out of every
//! `authorized_keys`, cloud-init's instance state and logs (`cloud-init clean --logs
//! --machine-id`, so the image's next boot is a first boot that takes a new key), the SSH host
//! keys the build used, kiln's temporary files, and the extra operations an image asks for
//! (modelled on libguestfs' `virt-sysprep`). The script is a synthesized shell step, so it runs
//! (as root, through `sudo -n` for other users) and reports exactly like the user's own steps.
//! It must not touch anything the user's provisioning made beyond those traces.

use kiln_config::{Generalize, GeneralizeOp, ShellBody, ShellStep, Step, StepKind};

use crate::provision::shell_quote;

/// What the script needs to know about the build.
#[derive(Debug, Clone)]
pub struct Traces<'a> {
    /// The build's `authorized_keys` line (`ssh-ed25519 AAAA… kiln`).
    pub build_key: &'a str,
    /// The per-build host key's public line, when one was handed to the guest.
    pub host_key: Option<&'a str>,
    /// The run's nonce: kiln's temporary files in the guest start with `/tmp/<nonce>-`.
    pub nonce: &'a str,
}

/// The key blob of an OpenSSH public key line (`ssh-ed25519 BLOB comment` → `BLOB`): what
/// identifies the key whatever comment or options a line carries.
fn key_blob(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or(line)
}

/// The one-line commands of the generalize step, in order. Each line is complete on its own
/// (the shell-step runner numbers lines to say which one failed).
pub fn lines(generalize: &Generalize, traces: &Traces<'_>) -> Vec<String> {
    let mut lines = Vec::new();
    if !generalize.enabled {
        return lines;
    }
    let build = shell_quote(key_blob(traces.build_key));
    // Every home in the password database, not only /root and /home/*: cloud-init's default
    // user may live elsewhere. `cat >` keeps the file's owner and mode.
    lines.push(format!(
        "IFS='\n'; for h in $(awk -F: '{{print $6}}' /etc/passwd | sort -u); do \
         f=\"$h/.ssh/authorized_keys\"; [ -f \"$f\" ] && grep -qF {build} \"$f\" || continue; \
         grep -vF {build} \"$f\" > \"$f.kiln-new\" || true; cat \"$f.kiln-new\" > \"$f\"; \
         rm -f \"$f.kiln-new\"; echo \"removed the build key from $f\"; done; unset IFS"
    ));
    // cloud-init: instance state, seed copies, logs, machine-id; the next boot is a first
    // boot. `--machine-id` is newer than some cloud-inits still in use.
    lines.push(
        "if command -v cloud-init >/dev/null 2>&1; then \
         if cloud-init clean --help 2>&1 | grep -q -- --machine-id; then \
         cloud-init clean --logs --machine-id; \
         else cloud-init clean --logs; if [ -s /etc/machine-id ]; then : > /etc/machine-id; fi; fi; \
         echo 'cleaned cloud-init state, logs and machine-id'; fi"
            .to_string(),
    );
    // Host keys: with cloud-init every one goes (it makes new ones at the next first boot);
    // without it only the per-build key kiln handed over, which nothing else could have made.
    // dropbear (the tiny guest, small images) makes missing keys on first use.
    let host = traces
        .host_key
        .map(|k| shell_quote(key_blob(k)))
        .unwrap_or_else(|| "''".into());
    lines.push(format!(
        "if command -v cloud-init >/dev/null 2>&1; then \
         for k in /etc/ssh/ssh_host_*_key; do [ -e \"$k\" ] && rm -f \"$k\" \"$k.pub\" && echo \"removed host key $k\"; done; \
         elif [ -n {host} ]; then for p in /etc/ssh/ssh_host_*_key.pub; do \
         [ -e \"$p\" ] && grep -qF {host} \"$p\" && rm -f \"${{p%.pub}}\" \"$p\" && echo \"removed host key ${{p%.pub}}\"; done; fi; \
         for k in /etc/dropbear/dropbear_*_host_key; do [ -e \"$k\" ] && rm -f \"$k\" && echo \"removed host key $k\"; done; true"
    ));
    lines.push(format!(
        "for f in /tmp/{nonce}-*; do [ -e \"$f\" ] && rm -rf \"$f\" && echo \"removed $f\"; done; true",
        nonce = traces.nonce
    ));
    for op in &generalize.extra {
        lines.push(extra_line(*op));
    }
    lines
}

fn extra_line(op: GeneralizeOp) -> String {
    match op {
        GeneralizeOp::MachineId => "if [ -s /etc/machine-id ]; then : > /etc/machine-id; fi; \
             rm -f /var/lib/dbus/machine-id; echo 'emptied /etc/machine-id'"
            .into(),
        // Rotated and compressed logs go; live ones are emptied, not deleted, so that services
        // that expect them (and their modes and owners) stay as they were.
        GeneralizeOp::Logs => "if [ -d /var/log ]; then \
             find /var/log -type f \\( -name '*.gz' -o -name '*.xz' -o -name '*.[0-9]' -o -name '*.old' \\) -exec rm -f {} +; \
             find /var/log -type f -exec sh -c 'for f; do : > \"$f\"; done' sh {} +; \
             rm -rf /var/log/journal/*; echo 'removed logs under /var/log'; fi"
            .into(),
        GeneralizeOp::BashHistory => "IFS='\n'; for h in $(awk -F: '{print $6}' /etc/passwd | sort -u); do \
             for f in \"$h/.bash_history\" \"$h/.ash_history\" \"$h/.sh_history\"; do \
             [ -e \"$f\" ] && rm -f \"$f\" && echo \"removed $f\"; done; done; unset IFS; true"
            .into(),
        GeneralizeOp::Tmp => "find /tmp /var/tmp -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null; \
             echo 'emptied /tmp and /var/tmp'"
            .into(),
        GeneralizeOp::PackageCache => "if command -v apt-get >/dev/null 2>&1; then apt-get clean; fi; \
             if command -v dnf >/dev/null 2>&1; then dnf clean all >/dev/null; \
             elif command -v yum >/dev/null 2>&1; then yum clean all >/dev/null; fi; \
             rm -rf /var/cache/apk/*; echo 'removed package caches'"
            .into(),
    }
}

/// The generalize step as a shell step, or `None` when `generalize = false`.
pub fn step(generalize: &Generalize, ssh_user: &str, traces: &Traces<'_>) -> Option<Step> {
    let lines = lines(generalize, traces);
    if lines.is_empty() {
        return None;
    }
    Some(Step {
        name: "generalize".into(),
        kind: StepKind::Shell(ShellStep {
            written: Vec::new(),
            body: ShellBody::Inline(lines),
            env: Default::default(),
            workdir: None,
            sudo: ssh_user != "root",
            timeout: Some(std::time::Duration::from_secs(10 * 60)),
        }),
    })
}

/// What the plan shows for the step.
pub fn title(generalize: &Generalize) -> String {
    let mut title = String::from(
        "remove the build key, cloud-init state, build host keys and kiln's temporary files",
    );
    if !generalize.extra.is_empty() {
        let extra: Vec<&str> = generalize.extra.iter().map(|op| op.as_str()).collect();
        title.push_str(&format!(" (+ {})", extra.join(", ")));
    }
    title
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traces() -> Traces<'static> {
        Traces {
            build_key: "ssh-ed25519 AAAAbuild kiln",
            host_key: Some("ssh-ed25519 AAAAhost kiln-host"),
            nonce: "kiln-20261201T000000Z-abcdef",
        }
    }

    #[test]
    fn disabled_means_no_step() {
        let off = Generalize {
            enabled: false,
            extra: vec![GeneralizeOp::Logs],
        };
        assert!(step(&off, "root", &traces()).is_none());
    }

    #[test]
    fn default_lines_name_the_build_key_and_host_key_blobs_only() {
        let lines = lines(&Generalize::default(), &traces());
        assert_eq!(lines.len(), 4);
        assert!(lines[0].contains("grep -vF 'AAAAbuild'"), "{}", lines[0]);
        assert!(lines[2].contains("grep -qF 'AAAAhost'"), "{}", lines[2]);
        assert!(lines[3].contains("/tmp/kiln-20261201T000000Z-abcdef-*"));
        assert!(
            lines
                .iter()
                .all(|l| !l.contains('\n') || l.contains("IFS='\n'"))
        );
    }

    #[test]
    fn extras_follow_in_order_and_sudo_for_other_users() {
        let g = Generalize {
            enabled: true,
            extra: vec![GeneralizeOp::MachineId, GeneralizeOp::Tmp],
        };
        let Some(Step {
            kind: StepKind::Shell(shell),
            ..
        }) = step(&g, "debian", &traces())
        else {
            panic!("a shell step")
        };
        assert!(shell.sudo);
        let ShellBody::Inline(lines) = &shell.body else {
            panic!("inline")
        };
        assert_eq!(lines.len(), 6);
        assert!(lines[4].contains("/etc/machine-id"));
        assert!(lines[5].contains("/var/tmp"));
        assert_eq!(
            title(&g),
            "remove the build key, cloud-init state, build host keys and kiln's temporary files \
             (+ machine-id, tmp)"
        );
    }

    /// The lines are real shell: run them against a fake root made of temporary files
    /// (paths rewritten into it) and check what they removed and kept.
    #[test]
    fn lines_run_in_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let home = root.join("home/debian");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::write(
            home.join(".ssh/authorized_keys"),
            "ssh-ed25519 AAAAuser me@laptop\nssh-ed25519 AAAAbuild kiln\n",
        )
        .unwrap();
        std::fs::write(
            root.join("passwd"),
            format!("debian:x:1000:1000::{}:/bin/sh\n", home.display()),
        )
        .unwrap();
        std::fs::create_dir_all(root.join("dropbear")).unwrap();
        std::fs::write(root.join("dropbear/dropbear_ed25519_host_key"), "k").unwrap();
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        std::fs::write(
            root.join("tmp/kiln-20261201T000000Z-abcdef-provision-1.sh"),
            "x",
        )
        .unwrap();
        std::fs::write(root.join("tmp/keep-me"), "x").unwrap();
        let r = root.display().to_string();
        for line in lines(&Generalize::default(), &traces()) {
            // (`/tmp/` first: the fake root itself may live under /tmp.)
            let line = line
                .replace("/tmp/kiln-", &format!("{r}/tmp/kiln-"))
                .replace("/etc/passwd", &format!("{r}/passwd"))
                .replace("/etc/dropbear", &format!("{r}/dropbear"))
                .replace("/etc/ssh", &format!("{r}/ssh"))
                // No cloud-init on the test host's PATH is assumed away explicitly.
                .replace("command -v cloud-init", "false");
            let out = std::process::Command::new("sh")
                .args(["-ec", &line])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{line}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(
            std::fs::read_to_string(home.join(".ssh/authorized_keys")).unwrap(),
            "ssh-ed25519 AAAAuser me@laptop\n"
        );
        assert!(!root.join("dropbear/dropbear_ed25519_host_key").exists());
        assert!(
            !root
                .join("tmp/kiln-20261201T000000Z-abcdef-provision-1.sh")
                .exists()
        );
        assert!(root.join("tmp/keep-me").exists());
    }
}
