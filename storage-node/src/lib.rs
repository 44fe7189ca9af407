//! Ramify's storage node: versioned Postgres timelines with copy-on-write forks at the
//! latest state, an LSN, a time or a snapshot, served over a JSON HTTP API.
#![deny(unsafe_code)]

pub mod accounting;
pub mod api;
pub mod backup;
pub mod beneath;
pub mod clone;
pub mod control;
pub mod failpoint;
pub mod inbox;
pub mod layout;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod pgcontrol;
pub mod pgdata;
pub mod sandbox;
pub mod wal;
pub mod window;
