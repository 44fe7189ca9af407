//! A repository that lost what the node put in it — the bucket emptied, or deleted and
//! made again, or a timeline's stanza removed by hand. Found by listing Ramify's records
//! once a heartbeat (an idle timeline pushes nothing that would fail) and after a failed
//! pass; healed from the node: a new stanza, every WAL file the node still holds (GC kept
//! all of it that was not in the bucket), and a new base backup, so a recovery works
//! again. The history the bucket lost before that base is gone from it; what the node
//! holds is untouched.

use super::*;

impl Node {
    /// Checks the bucket for every durable timeline's record, at most once a heartbeat,
    /// and heals the timelines the repository lost. Errors (an unreachable bucket) are
    /// left to the passes to report.
    pub(super) async fn verify_repository(&self, b: &Backups) {
        let every = b.claim_name().map_or(HEARTBEAT_EVERY, |(_, every)| every);
        {
            let mut at = b.verified_at.lock().unwrap_or_else(|p| p.into_inner());
            if at.is_some_and(|t| t.elapsed() < every) {
                return;
            }
            *at = Some(Instant::now());
        }
        let Ok(states) = self.meta.backup_states() else {
            return;
        };
        // Only timelines whose record is known to have been written can be missed.
        let written: Vec<TimelineId> = states
            .into_iter()
            .filter(|(_, st)| st.record.is_some() && st.deleted_at.is_none())
            .map(|(id, _)| id)
            .collect();
        if written.is_empty() {
            return;
        }
        let listed: HashSet<String> = match b.bucket.list("ramify/timelines/").await {
            Ok(l) => l.into_iter().collect(),
            Err(e) => {
                let why = e.to_string();
                let mut last = b.repo_error.lock().unwrap_or_else(|p| p.into_inner());
                if last.as_deref() != Some(why.as_str()) {
                    warn!(error = %why, "cannot check the backup repository");
                }
                *last = Some(why);
                return;
            }
        };
        *b.repo_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
        for id in written {
            if listed.contains(&format!("{id}.json")) {
                continue;
            }
            if let Err(e) = self.heal(b, id).await {
                warn!(timeline = %id, error = %e, "cannot check what the repository lost of this timeline");
            }
        }
    }

    /// After a failed pass of a timeline that was in the repository: whether it is there
    /// still. Returns a clearer cause than the tool's when the bucket itself is gone.
    pub(super) async fn check_after_failure(&self, b: &Backups, id: TimelineId) -> Option<String> {
        let st = self.meta.backup_state(id).ok()?;
        if !st.stanza_created || b.backing_up_now(id) {
            return None;
        }
        match self.heal(b, id).await {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Compares what the node believes is in the repository for `id` with the bucket:
    /// a stanza gone makes the timeline archived anew; a record gone alone is written
    /// again. Returns whether anything was lost.
    async fn heal(&self, b: &Backups, id: TimelineId) -> Result<bool, NodeError> {
        // A node fenced off the prefix leaves it alone.
        b.may_write()?;
        // A base backup under way would record a set into a state reset beneath it.
        if b.backing_up_now(id) {
            return Ok(false);
        }
        let stanza = id.to_string();
        let mut present = Vec::new();
        for key in [
            format!("archive/{stanza}/archive.info"),
            format!("archive/{stanza}/archive.info.copy"),
            format!("backup/{stanza}/backup.info"),
            format!("backup/{stanza}/backup.info.copy"),
        ] {
            present.push(b.bucket.get(&key).await?.is_some());
        }
        let stanza_lost = !(present[0] || present[1]) || !(present[2] || present[3]);
        if !stanza_lost {
            if b.bucket.get(&record_key(id)).await?.is_none() {
                info!(timeline = %id, "the repository lost this timeline's record; writing it again");
                self.update_backup_state(id, |s| s.record = None)?;
            }
            return Ok(false);
        }
        warn!(timeline = %id, "the backup repository lost this timeline (bucket emptied or made again?): archiving it anew from the WAL on the node, with a new base backup");
        // What is left of the stanza (an info file without its archive) would make
        // stanza-create refuse; removing nothing is fine.
        if let Err(e) = b.delete_stanza(&stanza).await {
            tracing::debug!(timeline = %id, error = %e, "nothing of the lost stanza to remove");
        }
        self.update_backup_state(id, |s| {
            *s = BackupState {
                deleted_at: s.deleted_at,
                lost_at: Some(Utc::now()),
                ..Default::default()
            }
        })?;
        b.update_health(id, |h| {
            h.failures = 0;
            h.next_try = None;
            h.backup_error = None;
        });
        Ok(true)
    }

    /// Whether a timeline marked lost has a base in the repository again: a backup of
    /// its own (an ancestor's older one would need the timeline's WAL from its fork point,
    /// which may be gone from the node and from the bucket).
    pub(super) fn based_again(&self, st: &BackupState) -> bool {
        !st.backups.is_empty()
    }
}

impl Backups {
    fn backing_up_now(&self, id: TimelineId) -> bool {
        self.backing_up
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }
}
