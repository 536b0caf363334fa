//! `kiln-manifest.json`: the structured record of one image's bake.
//!
//! Owns the manifest's schema (documented in docs/manifest.md; bump [`SCHEMA_VERSION`] on any
//! incompatible change) and writing it atomically. Publishing, promotion and notification will
//! read it; it must never contain a secret (no keys, no variable values, no environment).

use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub run_id: String,
    pub kiln_version: String,
    pub project: String,
    pub image: String,
    pub provider: String,
    pub source: Vec<InputRecord>,
    /// Provider facts (for qemu: `accelerator`, `accelerator_reason`).
    pub machine: serde_json::Map<String, serde_json::Value>,
    pub output: OutputRecord,
    pub steps: Vec<StepRecord>,
    pub started: Timestamp,
    pub finished: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutputRecord {
    pub path: PathBuf,
    pub format: String,
    pub compressed: bool,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub title: String,
    pub key: String,
    pub started: Timestamp,
    pub duration_s: f64,
}

impl Manifest {
    /// Write next to the image: to a temporary name first, then renamed, so a reader never
    /// sees half a manifest.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.partial");
        let mut file = std::fs::File::create(&tmp)?;
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> std::io::Result<Manifest> {
        let text = std::fs::read_to_string(path)?;
        serde_json::from_str(&text).map_err(std::io::Error::other)
    }
}
