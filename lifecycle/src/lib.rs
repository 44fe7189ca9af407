//! The branch lifecycle — create (root or fork), wake, suspend, delete, and the workflows
//! on top (reset, restore, checkpoints, protection, expiry) — written once and run against
//! a [`Runtime`]: the local one (Postgres processes on this machine) now, the Kubernetes
//! one (Pods, Services, Secrets) with the operator.
#![forbid(unsafe_code)]

pub mod checkpoints;
pub mod core;
pub mod expiry;
pub mod locks;
pub mod model;
pub mod names;
pub mod password;
pub mod recovery;
pub mod restore;
pub mod store;

pub use crate::core::{Lifecycle, LifecycleError, Runtime};
pub use model::*;
pub use recovery::Recovery;
