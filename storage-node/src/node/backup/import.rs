//! Copies of another node's durable timelines: a root of this node made from what that
//! node keeps in the same bucket under its own prefix — the lineage's base backup, its
//! WAL and its ancestors' — as of the timeline's last archived WAL. Forking across
//! nodes, and the first step of moving a branch. The other prefix is only read: its
//! writer stays the node that claimed it.

use std::collections::BTreeMap;

use ramify_api::FromBackup;

use super::recover::Mode;
use super::*;
use crate::backup::BucketRecord;

impl Node {
    /// Makes timeline `id` (a root of this node) a copy of `from`. Called by
    /// [`Node::create`] under the id's lock, with the record of a create in progress
    /// removed on failure.
    pub(in crate::node) async fn import_from_backup(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
        from: &FromBackup,
    ) -> Result<TimelineRecord, NodeError> {
        let b = self.backups.get().ok_or_else(|| {
            NodeError::Invalid(
                "\"from_backup\" needs this node to have a backup repository (--backup-repo)"
                    .into(),
            )
        })?;
        let prefix = valid_prefix(&from.prefix)?;
        let mut repo = b.repo().clone();
        repo.prefix = prefix;
        let other = Backups::reader(self, repo, b.pgbr.bin().to_path_buf(), id)?;
        let t0 = Instant::now();
        let result = async {
            let lineage = lineage(&other, from.timeline).await?;
            let r = &lineage[&from.timeline];
            self.recover_one(
                &other,
                r,
                &lineage,
                &HashMap::new(),
                &mut None,
                Mode::Import { id, req },
            )
            .await
        }
        .await;
        // pgBackRest's working directory for the other prefix, whatever happened (one a
        // crash left is removed by the next copy under the same id).
        let _ = std::fs::remove_dir_all(&other.work);
        result?;
        let rec = self.record(id)?;
        info!(timeline = %id, from = %from.timeline, repository = %other.repo().describe(), elapsed_ms = t0.elapsed().as_millis() as u64, "copied a timeline from another node's backup repository prefix");
        Ok(rec)
    }
}

impl Backups {
    /// A reader of another prefix of the same bucket, with a pgBackRest working directory
    /// of its own (`<data>/backup/import/<id>`), that never claims or writes it.
    fn reader(node: &Node, repo: Repo, bin: PathBuf, id: TimelineId) -> Result<Backups, NodeError> {
        let work = node
            .layout
            .root()
            .join("backup/import")
            .join(id.to_string());
        let _ = std::fs::remove_dir_all(&work);
        Backups::new(repo, bin, work, u64::MAX)
    }
}

/// The records of `id` and its ancestors in `b`'s prefix.
async fn lineage(
    b: &Backups,
    id: TimelineId,
) -> Result<BTreeMap<TimelineId, BucketRecord>, NodeError> {
    let mut out = BTreeMap::new();
    let mut cur = Some(id);
    while let Some(t) = cur {
        let Some(body) = b.bucket.get(&record_key(t)).await? else {
            if t == id {
                return Err(NodeError::NotFound(format!(
                    "timeline {id} is not in the backup repository {} (is it durable, and has its node archived it yet?)",
                    b.repo().describe()
                )));
            }
            // A parent that was not durable: the lineage ends here (the timeline's
            // own backup is its base).
            break;
        };
        let r: BucketRecord = serde_json::from_slice(&body).map_err(|e| {
            NodeError::Conflict(format!(
                "the record of timeline {t} in {} is not valid: {e}",
                b.repo().describe()
            ))
        })?;
        if r.format != RECORD_FORMAT || r.id != t {
            return Err(NodeError::Conflict(format!(
                "the record of timeline {t} in {} has format {} (this node reads {RECORD_FORMAT}) or another id",
                b.repo().describe(),
                r.format
            )));
        }
        if t == id {
            if let Some(at) = r.deleted_at {
                return Err(NodeError::NotFound(format!(
                    "timeline {id} was deleted from its node at {}",
                    at.to_rfc3339()
                )));
            }
        }
        cur = r.parent;
        out.insert(t, r);
        if out.len() > 10_000 {
            return Err(NodeError::Conflict(format!(
                "the lineage of timeline {id} in the repository loops"
            )));
        }
    }
    Ok(out)
}

/// A prefix of the node's bucket, as given: relative, without `..` or empty segments.
fn valid_prefix(p: &str) -> Result<String, NodeError> {
    let p = p.trim_end_matches('/');
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|s| !s.is_empty() && s != "." && s != "..")
        && p.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'));
    if !ok {
        return Err(NodeError::Invalid(format!(
            "\"from_backup.prefix\" {p:?} is not a prefix of this node's bucket (like ramify/ramify-storage-0: letters, digits, - _ . and /, no .. or empty parts)"
        )));
    }
    Ok(p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_relative_and_plain() {
        assert_eq!(valid_prefix("ramify/node-0/").unwrap(), "ramify/node-0");
        for bad in ["", "/abs", "a/../b", "a//b", "a b", "./a"] {
            assert!(valid_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
