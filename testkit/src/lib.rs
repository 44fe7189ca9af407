//! Test harness for Ramify's data path with real Postgres.
//!
//! * [`Scratch`]: a throwaway directory, on a loop-mounted reflink XFS volume when the
//!   machine allows (root + xfsprogs), always cleaned up, even after a panic.
//! * [`free_port`]: a TCP port nobody listens on.
//! * [`Compute`]: a Postgres started through `ramify-compute`, with query helpers,
//!   `pg_amcheck` and `pgbench`; stopped when dropped.
//! * [`ApiServer`]: etcd + kube-apiserver for controller tests; [`kube_env`]: its client,
//!   Ramify's CRDs, namespaces, waiting for a condition.
//! * [`S3Server`]: a real S3-compatible server (SeaweedFS) with one bucket, over TLS.
//! * [`StorageNodeProcess`]: a `ramify-storage` process, health-checked, killable and
//!   restartable.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod apiserver;
pub mod bench;
pub mod compute;
pub mod kube_env;
pub mod port;
pub mod s3;
pub mod scratch;
pub mod storage_node;

pub use apiserver::{ApiServer, ApiServerError};
pub use compute::{Compute, ComputeError};
pub use port::free_port;
pub use s3::S3Server;
pub use scratch::{Scratch, ScratchError};
pub use storage_node::{StorageNodeError, StorageNodeProcess};
