//! kiln: bake machine images and ship releases from one declarative file.
//!
//! A build flows `config` → [`plan`] → [`runner`] (steps, cancellation, cleanup) →
//! [`provider`] (machines) and [`provision`] (steps over SSH), with every resource recorded in
//! the [`journal`] before it exists and reaped by [`gc`] when a run dies. ARCHITECTURE.md
//! tells the story in one page.

pub mod cli;
pub mod digest;
pub mod events;
pub mod gc;
pub mod generalize;
pub mod journal;
pub mod manifest;
pub mod paths;
pub mod plan;
pub mod provider;
pub mod provision;
pub mod runner;

pub use kiln_config as config;
