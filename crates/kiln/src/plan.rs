//! The plan: which steps a build runs, in order, with their cleanups and identities.
//!
//! Owns turning the checked model into [`ImagePlan`]s of [`PlannedStep`]s. Each step has a
//! stable id (`provision/2`) and a key: the SHA-256 of the previous step's key, the step's
//! definition and the digests of its input files, so a later layer cache can reuse the result
//! of every step whose key is unchanged. The plan runs nothing and creates nothing; `runner`
//! executes it and step-wise verbs can execute parts of it.

use std::path::{Path, PathBuf};

use kiln_config::{Config, Image, ShellBody, Source, StepKind};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::digest;

/// What one step of a bake does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "index", rename_all = "snake_case")]
pub enum BakeStep {
    /// Scratch directory and the per-build SSH key.
    Prepare,
    /// Start the build machine from the source.
    Launch,
    /// Wait for SSH.
    Connect,
    /// `provision[i]`.
    Provision(usize),
    /// `test[i]`.
    Test(usize),
    /// Remove the build's traces from the guest (`generalize`).
    Generalize,
    /// Run the shutdown command and wait for the machine to stop.
    Shutdown,
    /// Turn the stopped machine into the output image.
    Capture,
    /// Write `kiln-manifest.json`.
    Manifest,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedStep {
    /// Stable within an image: `launch`, `provision/2`, `test/1`.
    pub id: String,
    pub step: BakeStep,
    /// One line for people.
    pub title: String,
    /// What undoes it, run in reverse order on success, failure or interrupt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup: Option<String>,
    /// Hex SHA-256 over the chain of definitions and inputs up to and including this step.
    pub key: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Input {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImagePlan {
    pub image: String,
    pub provider: String,
    /// Digests of the source files (disk, kernel, initrd), for the manifest.
    pub source_inputs: Vec<Input>,
    /// The finished image.
    pub output: PathBuf,
    /// `kiln-manifest.json` beside it.
    pub manifest: PathBuf,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub images: Vec<ImagePlan>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("unknown image `{name}`{}", hint(.suggestion, .known))]
    UnknownImage {
        name: String,
        suggestion: Option<String>,
        known: Vec<String>,
    },
    #[error("read input {path}")]
    Input {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn hint(suggestion: &Option<String>, known: &[String]) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => format!(" (images: {})", known.join(", ")),
    }
}

/// Plan the images named in `only` (all when empty), in file order.
pub fn plan(config: &Config, only: &[String]) -> Result<Plan, PlanError> {
    let known: Vec<String> = config.images.iter().map(|i| i.name.clone()).collect();
    for name in only {
        if !known.contains(name) {
            let suggestion = kiln_config::suggest::closest(name, known.iter().map(String::as_str))
                .map(str::to_string);
            return Err(PlanError::UnknownImage {
                name: name.clone(),
                suggestion,
                known,
            });
        }
    }
    let images = config
        .images
        .iter()
        .filter(|i| only.is_empty() || only.contains(&i.name))
        .map(|image| plan_image(config, image))
        .collect::<Result<_, _>>()?;
    Ok(Plan {
        project: config.project.name.clone(),
        images,
    })
}

fn digest_input(path: &Path) -> Result<Input, PlanError> {
    let cache = crate::paths::cache_dir().join("digests.json");
    let sha256 = digest::sha256_path_cached(path, &cache).map_err(|source| PlanError::Input {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Input {
        path: path.to_path_buf(),
        sha256,
    })
}

/// Step keys chain from one step to the next. A definition is hashed with the paths inside the
/// project written relative to it, so that two checkouts of one project (a laptop, CI) give
/// the same keys; the content of every input is in the key through its digest anyway.
struct KeyChain {
    key: String,
    root: PathBuf,
}

impl KeyChain {
    fn next(&mut self, definition: &impl Serialize, inputs: &[&Input]) -> String {
        let mut definition = serde_json::to_value(definition).expect("model serialises");
        relative_paths(&mut definition, &self.root);
        let mut h = Sha256::new();
        h.update(b"kiln-step-v2\0");
        h.update(self.key.as_bytes());
        h.update(serde_json::to_vec(&definition).expect("values serialise"));
        for input in inputs {
            h.update(input.sha256.as_bytes());
        }
        self.key = hex::encode(h.finalize());
        self.key.clone()
    }
}

/// Rewrite every string that is a path inside `root` as the path relative to it.
fn relative_paths(value: &mut serde_json::Value, root: &Path) {
    match value {
        serde_json::Value::String(s) => {
            if let Ok(rel) = Path::new(s.as_str()).strip_prefix(root) {
                *s = rel.display().to_string();
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                relative_paths(item, root);
            }
        }
        serde_json::Value::Object(map) => {
            for item in map.values_mut() {
                relative_paths(item, root);
            }
        }
        _ => {}
    }
}

/// A path as people and manifests should see it: relative to the project when inside it.
pub fn project_relative(root: &Path, path: &Path) -> PathBuf {
    path.strip_prefix(root)
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| path.to_path_buf())
}

fn plan_image(config: &Config, image: &Image) -> Result<ImagePlan, PlanError> {
    let rel = |p: &Path| -> String {
        p.strip_prefix(&config.root)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    let Source::Qemu(src) = &image.source;
    let mut source_inputs = vec![digest_input(&src.disk)?];
    for p in [&src.kernel, &src.initrd].into_iter().flatten() {
        source_inputs.push(digest_input(p)?);
    }
    let out_dir = config.project.output_dir.join(&image.name);
    let output = out_dir.join(&image.output.file_name);
    let manifest = out_dir.join("kiln-manifest.json");

    let mut chain = KeyChain {
        key: String::new(),
        root: config.root.clone(),
    };
    let mut steps = Vec::new();
    let mut push = |step: BakeStep, title: String, cleanup: Option<&str>, key: String| {
        let id = match step {
            BakeStep::Prepare => "prepare".to_string(),
            BakeStep::Launch => "launch".to_string(),
            BakeStep::Connect => "connect".to_string(),
            BakeStep::Provision(i) => format!("provision/{}", i + 1),
            BakeStep::Test(i) => format!("test/{}", i + 1),
            BakeStep::Generalize => "generalize".to_string(),
            BakeStep::Shutdown => "shutdown".to_string(),
            BakeStep::Capture => "capture".to_string(),
            BakeStep::Manifest => "manifest".to_string(),
        };
        steps.push(PlannedStep {
            id,
            step,
            title,
            cleanup: cleanup.map(str::to_string),
            key,
        });
    };

    let source_refs: Vec<&Input> = source_inputs.iter().collect();
    let launch_key = chain.next(&image.source, &source_refs);
    let pinned = image.ssh.host_key == kiln_config::HostKeyCheck::Pinned;
    push(
        BakeStep::Prepare,
        if pinned {
            "scratch directory, a fresh ed25519 key and the guest's host key".into()
        } else {
            "scratch directory and a fresh ed25519 key".into()
        },
        Some("remove the scratch directory"),
        launch_key.clone(),
    );
    let accel = match src.accelerator {
        kiln_config::Accelerator::Auto => "KVM if it works, else TCG".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    push(
        BakeStep::Launch,
        format!(
            "overlay on {}, boot QEMU ({} MiB, {} cpu, {accel})",
            rel(&src.disk),
            src.memory_mib,
            src.cpus
        ),
        Some("stop QEMU, delete the overlay"),
        launch_key.clone(),
    );
    push(
        BakeStep::Connect,
        format!(
            "wait for SSH as {} (up to {}; {})",
            image.ssh.user,
            humantime::format_duration(image.ssh.timeout),
            if pinned {
                "only the pinned host key"
            } else {
                "any host key on first contact"
            }
        ),
        Some("close the SSH session"),
        launch_key,
    );
    for (phase, list) in [("provision", &image.provision), ("test", &image.test)] {
        for (i, step) in list.iter().enumerate() {
            let inputs = match &step.kind {
                StepKind::Shell(s) => match &s.body {
                    ShellBody::Script(p) => vec![digest_input(p)?],
                    ShellBody::Inline(_) => vec![],
                },
                StepKind::File(f) => vec![digest_input(&f.from)?],
                StepKind::Collect(_) => vec![],
            };
            let refs: Vec<&Input> = inputs.iter().collect();
            let key = chain.next(&step.kind, &refs);
            let title = match &step.kind {
                // The lines as written, not as interpolated: a `{{ token }}` stays a name here.
                StepKind::Shell(s) => match &s.body {
                    ShellBody::Inline(lines) if step.name == "shell" => format!(
                        "shell: {}{}",
                        s.written.first().map(String::as_str).unwrap_or(""),
                        if lines.len() > 1 {
                            format!(" (+{} more)", lines.len() - 1)
                        } else {
                            String::new()
                        }
                    ),
                    ShellBody::Inline(_) => format!("shell: {}", step.name),
                    ShellBody::Script(p) => format!("shell script {}", rel(p)),
                },
                StepKind::File(f) => format!("upload {} → {}", rel(&f.from), f.to),
                StepKind::Collect(c) => format!("collect {} → {}", c.from, rel(&c.to)),
            };
            let kind = if phase == "provision" {
                BakeStep::Provision(i)
            } else {
                BakeStep::Test(i)
            };
            push(kind, title, None, key);
        }
    }
    if image.generalize.enabled {
        let key = chain.next(&image.generalize, &[]);
        push(
            BakeStep::Generalize,
            crate::generalize::title(&image.generalize),
            None,
            key,
        );
    }
    let key = chain.next(&image.shutdown, &[]);
    push(
        BakeStep::Shutdown,
        format!(
            "`{}`, wait up to {} for the machine to stop",
            image.shutdown.command,
            humantime::format_duration(image.shutdown.timeout)
        ),
        None,
        key,
    );
    let key = chain.next(&image.output, &[]);
    push(
        BakeStep::Capture,
        format!(
            "qemu-img convert → {} ({}{})",
            rel(&output),
            image.output.format.as_str(),
            if image.output.compress {
                ", compressed"
            } else {
                ""
            }
        ),
        Some("delete the partial output if the step does not finish"),
        key.clone(),
    );
    push(BakeStep::Manifest, rel(&manifest), None, key);

    Ok(ImagePlan {
        image: image.name.clone(),
        provider: image.source.provider().to_string(),
        source_inputs,
        output,
        manifest,
        steps,
    })
}

impl Plan {
    /// The plan as people read it (`kiln plan`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (n, image) in self.images.iter().enumerate() {
            if n > 0 {
                out.push('\n');
            }
            out.push_str(&format!("image {} ({})\n", image.image, image.provider));
            let width = image.steps.iter().map(|s| s.id.len()).max().unwrap_or(0);
            for (i, step) in image.steps.iter().enumerate() {
                out.push_str(&format!(
                    "  {:>2}. {:<width$}  {}\n",
                    i + 1,
                    step.id,
                    step.title
                ));
                if let Some(cleanup) = &step.cleanup {
                    out.push_str(&format!("      {:<width$}  cleanup: {cleanup}\n", ""));
                }
            }
        }
        out.push_str(
            "\nCleanups run in reverse order on success, failure or interrupt \
             (--on-error=abort keeps the machine for inspection).\n",
        );
        out
    }
}
