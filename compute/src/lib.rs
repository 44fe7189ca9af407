//! Runs stock, unmodified Postgres on a timeline's data directory.
//!
//! * [`PgBin`] finds a Postgres installation and its tools.
//! * [`PgUser`] is the unprivileged OS user Postgres runs as (Postgres refuses root).
//! * [`ComputeSettings`] renders Ramify's generated `ramify.conf` include file.
//! * [`process`] runs `initdb`, starts Postgres (returning only once it accepts
//!   connections), stops it, and kills it for crash tests.
//! * [`promote`] promotes a fork's first start fast, without an end-of-recovery
//!   checkpoint.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bin;
pub mod process;
pub mod promote;
pub mod roles;
pub mod settings;
pub mod tail;
pub mod user;

pub use bin::{BinError, PgBin};
pub use process::{ProcessError, RunningCompute, StopMode};
pub use settings::{ComputeSettings, SettingsError, Standby, DURABLE_ARCHIVE_TIMEOUT_SECS};
pub use user::{PgUser, UserError};
