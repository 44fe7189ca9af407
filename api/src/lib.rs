//! The storage node's API: the JSON types it speaks and a typed client for them.
//!
//! Everything here is shared by the storage node, the tests and (later) the lifecycle
//! core, CLI and operator, so a field renamed here is renamed everywhere at once.
#![forbid(unsafe_code)]

pub mod client;
pub mod lsn;
pub mod names;
pub mod parameters;
pub mod timeline;
pub mod timestamp;
pub mod token;

pub use client::{ClientError, StorageClient};
pub use lsn::{Lsn, LsnParseError};
pub use timeline::*;
pub use timestamp::{parse_time_or_ago, parse_timestamp, TimestampError};
pub use token::{ApiToken, TokenError};
