//! Local mode: the whole of Ramify on one machine with no Kubernetes — the storage node,
//! the wake-on-connect proxy and Postgres computes, supervised by one daemon that the
//! `ramify` CLI talks to.
#![forbid(unsafe_code)]

pub mod backup;
pub mod ca;
pub mod client;
pub mod daemon;
pub mod files;
pub mod runtime;

pub use backup::LocalBackup;
pub use client::{DaemonClient, DaemonError};
pub use daemon::{run, DaemonConfig};
pub use files::DaemonFile;
