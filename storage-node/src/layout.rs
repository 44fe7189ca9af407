//! Where things live in the data directory. Every path the node touches is built here.

use std::path::{Path, PathBuf};

use ramify_api::TimelineId;

/// The data directory's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// Layout rooted at `root` (the `--data-dir`).
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory holding every timeline.
    pub fn timelines(&self) -> PathBuf {
        self.root.join("timelines")
    }

    /// `timelines/<id>`: everything one timeline owns.
    pub fn timeline(&self, id: TimelineId) -> PathBuf {
        self.timelines().join(id.to_string())
    }

    /// Staging directory of a timeline being created; removed if the node crashes.
    pub fn creating(&self, id: TimelineId) -> PathBuf {
        self.timelines().join(format!(".creating-{id}"))
    }

    /// A timeline being deleted: renamed here first so it vanishes atomically.
    pub fn deleting(&self, id: TimelineId) -> PathBuf {
        self.timelines().join(format!(".deleting-{id}"))
    }

    /// Warm standbys of physical followers (see `node::follow::warm`): mounted by no
    /// compute.
    pub fn warm_root(&self) -> PathBuf {
        self.root.join("warm")
    }

    /// `warm/<id>`: the warm standby of follower `id`.
    pub fn warm(&self, id: TimelineId) -> PathBuf {
        self.warm_root().join(id.to_string())
    }

    /// Metadata store file.
    pub fn meta_db(&self) -> PathBuf {
        self.root.join("meta").join("meta.redb")
    }
}

/// Paths inside one timeline directory (final or staging).
#[derive(Debug, Clone)]
pub struct TimelineDir(pub PathBuf);

impl TimelineDir {
    pub fn pgdata(&self) -> PathBuf {
        self.0.join("pgdata")
    }
    pub fn pg_wal(&self) -> PathBuf {
        self.0.join("pgdata").join("pg_wal")
    }
    /// This timeline's own WAL archive (no compute writes it; see [`crate::inbox`]).
    pub fn archive(&self) -> PathBuf {
        self.0.join(crate::inbox::ARCHIVE)
    }
    /// Where the compute's `archive_command` puts finished WAL for the node to archive.
    pub fn inbox(&self) -> PathBuf {
        self.0.join(crate::inbox::INBOX)
    }
    /// Arrivals the node refused to archive, kept for inspection.
    pub fn rejected(&self) -> PathBuf {
        self.0.join(crate::inbox::REJECTED)
    }
    pub fn snapshots(&self) -> PathBuf {
        self.0.join("snapshots")
    }
    /// PGDATA of one snapshot.
    pub fn snapshot_pgdata(&self, name: &str) -> PathBuf {
        self.snapshots().join(name).join("pgdata")
    }
    /// Staging directory of a snapshot being taken.
    pub fn snapshot_staging(&self, name: &str) -> PathBuf {
        self.snapshots().join(format!(".creating-{name}"))
    }
    /// The compute's Unix socket directory.
    pub fn run(&self) -> PathBuf {
        self.0.join("run")
    }
}
