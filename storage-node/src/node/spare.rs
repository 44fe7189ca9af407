//! A spare clone of a restored timeline's `fork` snapshot, so that the next fork from it
//! does not wait for the clone.
//!
//! A fork from a snapshot (every restore, revert and fork at an LSN, a time or a
//! snapshot) starts as a clone of that snapshot's PGDATA. Cloning costs one
//! reference-count update per extent, and a branch that takes scattered writes has many:
//! at pgbench scale 100 after a minute of load, 0.6–2 s of the 1.7–1.8 s a revert to a
//! checkpoint took. Reverts and restores come in series (an agent checkpoints, tries,
//! reverts, tries again): each one forks the timeline the previous one made, from that
//! timeline's `fork` snapshot. So once a `fork` snapshot is published the node clones it
//! once more, in the background, into `snapshots/fork/spare`; the next fork from it
//! renames the spare into place instead of cloning (and the node makes no new one: a
//! spare is for the first fork after a restore).
//!
//! The spare is the snapshot's PGDATA exactly: snapshots never change, the clone goes
//! to `.spare-tmp` and is renamed to `spare` only when whole, and it is made and taken
//! under the timeline's history lock held shared (snapshot deletion and GC, which hold it
//! exclusively, remove it with its snapshot). Taking it is one rename, so two forks
//! cannot both have it; the one that finds none clones as before. A fork that took it
//! makes its PGDATA durable as any other before its commit. Spares are made only where
//! clones are reflinks (a copy would double the space), and a node starting up removes
//! every spare, whole or not: they cost a clone to remake and are never worth doubting;
//! a node short of space (below its reserve) makes none.
//! What one costs while it waits: the inodes of one more PGDATA and a second reference to
//! each of its extents — no data blocks.

use super::*;

/// The only snapshot a spare is made of.
const FORK: &str = "fork";
/// Where a snapshot's spare is, beside its `pgdata`.
const SPARE: &str = "spare";
/// Where it is cloned to first.
const SPARE_STAGING: &str = ".spare-tmp";

impl Node {
    /// Clones the `fork` snapshot of timeline `id` into its spare (see the module).
    /// Failure costs only the spare: it is logged and the half-made clone removed.
    pub(super) async fn make_spare(&self, id: TimelineId) {
        if self.clone_method != CloneMethod::Reflink {
            return;
        }
        // A node short of space keeps what it has for the branches' own writes.
        if self.ensure_reserve("a spare clone").await.is_err() {
            return;
        }
        let t0 = Instant::now();
        let _history = self.history_of(id).read_owned().await;
        // The timeline or the snapshot may have been deleted meanwhile.
        match self.record(id) {
            Ok(rec) if rec.snapshots.iter().any(|s| s.info.name == FORK) => {}
            _ => return,
        }
        let snap = match self.open_dir(&self.dir(id).snapshots().join(FORK)) {
            Ok(d) => d,
            Err(_) => return,
        };
        let method = self.clone_method;
        let made = tokio::task::spawn_blocking(move || -> Result<(), CloneError> {
            snap.remove_tree(SPARE_STAGING)?;
            let src = snap.open_dir("pgdata")?;
            let cloned =
                clone::clone_tree_whole(&src, &snap, SPARE_STAGING, method, &|_: &Path, _| false)
                    .and_then(|_| {
                        crate::failpoint::hit("spare.before_publish");
                        Ok(snap.rename(SPARE_STAGING, &snap, SPARE)?)
                    });
            if cloned.is_err() {
                let _ = snap.remove_tree(SPARE_STAGING);
            }
            cloned
        })
        .await;
        match made {
            Ok(Ok(())) => {
                info!(timeline = %id, snapshot = FORK, elapsed_ms = t0.elapsed().as_millis() as u64, "spare clone of the snapshot made for the next fork from it")
            }
            Ok(Err(e)) => {
                warn!(timeline = %id, snapshot = FORK, error = %e, "cannot make a spare clone of the snapshot: the next fork from it clones it")
            }
            Err(e) => {
                warn!(timeline = %id, snapshot = FORK, error = %e, "the spare clone of the snapshot failed")
            }
        }
    }

    /// Moves the spare of the snapshot whose directory is `snap` (its caller holds the
    /// timeline's history lock) to `pgdata` in `dst`, if it has one. Returns whether it
    /// did: `false` means the caller clones the snapshot itself.
    pub(super) fn take_spare(&self, snap: &Path, dst: &Dir) -> Result<bool, NodeError> {
        let Ok(snap) = self.open_dir(snap) else {
            return Ok(false);
        };
        match snap.rename_no_replace(SPARE, dst, "pgdata") {
            Ok(taken) => Ok(taken),
            // None there, or taken by another fork a moment ago.
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(CloneError::from(e).into()),
        }
    }

    /// At start-up: removes the spare (whole or half-made) of the `fork` snapshot in
    /// `snaps`, the only one that may have one.
    pub(super) fn remove_spare(&self, snaps: &Dir) -> Result<(), NodeError> {
        if let Ok(Some(snap)) = snaps.open_dir_if_exists(FORK) {
            for leftover in [SPARE, SPARE_STAGING] {
                snap.remove_tree(leftover).map_err(CloneError::from)?;
            }
        }
        Ok(())
    }
}
