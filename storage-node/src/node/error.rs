//! Errors of the storage node, each mapping to an HTTP status.

use super::*;

/// Everything that can go wrong, each with the HTTP status it maps to.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    OutOfRange(String),
    /// The timeline's data directory waits for a start (a recovery or copy not run yet):
    /// a conflict the caller ends by starting its compute once.
    #[error("{0}")]
    NotStarted(String),
    #[error(transparent)]
    Fs(#[from] CloneError),
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    PgControl(#[from] PgControlError),
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("background task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("initdb of a new root timeline failed: {0}")]
    Initdb(#[from] ramify_compute::ProcessError),
    /// Free space is below the node's reserve (see `node::reserve`).
    #[error("{0}")]
    InsufficientStorage(String),
    /// The Postgres a following root copies or follows refused, failed or could not be
    /// reached (see `node::follow`).
    #[error("{message}")]
    Source { unreachable: bool, message: String },
    /// The backup repository or pgBackRest failed (see `node::backup`).
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
}

impl NodeError {
    /// Stable code for the API and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            NodeError::Invalid(_) => "invalid_request",
            NodeError::NotFound(_) => "not_found",
            NodeError::Conflict(_) => "conflict",
            NodeError::NotStarted(_) => "not_started",
            NodeError::OutOfRange(_) => "out_of_range",
            NodeError::InsufficientStorage(_) => "insufficient_storage",
            NodeError::Source {
                unreachable: true, ..
            } => "source_unreachable",
            NodeError::Source { .. } => "source_refused",
            NodeError::Backup(crate::backup::BackupError::Config(_)) => "invalid_request",
            NodeError::Backup(_) => "backup_failed",
            e if e.is_disk_full() => "insufficient_storage",
            _ => "internal",
        }
    }

    /// A file a timeline must not contain (a link, a special file, a hard link, a
    /// tablespace; see [`crate::beneath`]) is the state of that timeline, not a failure of
    /// the node: a conflict, with the message naming the file.
    pub fn refusal_is_conflict(self) -> NodeError {
        let b = match &self {
            NodeError::Fs(CloneError::Beneath(b)) => b,
            NodeError::Wal(WalError::Fs(CloneError::Beneath(b))) => b,
            _ => return self,
        };
        if b.is_refusal() {
            NodeError::Conflict(b.to_string())
        } else {
            self
        }
    }

    fn is_disk_full(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                if io.raw_os_error() == Some(libc::ENOSPC) {
                    return true;
                }
            }
            cur = e.source();
        }
        false
    }
}
