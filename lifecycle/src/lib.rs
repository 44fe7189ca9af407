//! The branch lifecycle — create (root or fork), wake, suspend, delete — written once and
//! run against a [`Runtime`]: the local one (Postgres processes on this machine) now, the
//! Kubernetes one (Pods, Services, Secrets) with the operator.
#![forbid(unsafe_code)]

pub mod core;
pub mod locks;
pub mod model;
pub mod names;
pub mod password;
pub mod store;

pub use crate::core::{Lifecycle, LifecycleError, Runtime};
pub use model::*;
