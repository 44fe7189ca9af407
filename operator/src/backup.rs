//! Condition `BackupHealthy` of a branch kept in its storage node's backup repository
//! (`spec.backup`, or a root on a node with one): whether its WAL reaches the bucket,
//! from what the node reports of the timeline.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use ramify_api::TimelineInfo;

use crate::conditions::{self, BACKUP_HEALTHY};

/// Sets `BackupHealthy` from the timeline's backup status, or removes it for a timeline
/// the node does not keep in a repository (false, `NoRepository`, when the branch asked
/// for it). A healthy branch's message changes only with a new base backup, so the
/// condition does not rewrite the status on every reconcile.
pub fn update(
    conds: &mut Vec<Condition>,
    info: &TimelineInfo,
    asked: Option<bool>,
    node: &str,
    generation: Option<i64>,
) {
    let Some(b) = &info.backup else {
        if asked == Some(true) {
            conditions::set(
                conds,
                BACKUP_HEALTHY,
                false,
                "NoRepository",
                format!("spec.backup.enabled, but storage node {node} has no backup repository (the chart's storage.backup) or keeps this branch's timeline out of it: nothing of it is off the node"),
                generation,
            );
        } else {
            conds.retain(|c| c.type_ != BACKUP_HEALTHY);
        }
        return;
    };
    let base = match &b.newest_backup {
        Some(n) => format!(
            "newest base backup {} at {} (LSN {})",
            n.set,
            n.time.to_rfc3339(),
            n.lsn
        ),
        None => "no base backup of its own (its parent's and its own WAL)".to_string(),
    };
    if b.healthy {
        conditions::set(
            conds,
            BACKUP_HEALTHY,
            true,
            "Archiving",
            format!("WAL archived to {}; {base}", b.repository),
            generation,
        );
    } else {
        let archived = match (&b.archived_to, b.archived_at) {
            (Some(wal), Some(at)) => format!("WAL archived to {wal} at {}", at.to_rfc3339()),
            _ => "no WAL archived yet".to_string(),
        };
        conditions::set(
            conds,
            BACKUP_HEALTHY,
            false,
            "ArchivingFails",
            format!(
                "{}; {}B of WAL kept on the node until it reaches {}; {archived}",
                b.error.as_deref().unwrap_or("archiving fails"),
                conditions::human_bytes(b.backlog_bytes as i64),
                b.repository
            ),
            generation,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ramify_api::BackupStatus;

    fn info(backup: Option<BackupStatus>) -> TimelineInfo {
        let mut info: TimelineInfo = serde_json::from_value(serde_json::json!({
            "id": "6d2f0b8e-0000-4000-8000-000000000001",
            "parent": null, "at": null, "fork_lsn": null, "fork_time": null,
            "state": "ready", "compute": "stopped",
            "created_at": "2026-12-07T00:00:00Z",
            "pgdata": "/data/timelines/x/pgdata", "archive": "/data/timelines/x/wal",
            "run_dir": "/data/timelines/x/run", "archive_command": "true",
            "logical_bytes": 0, "exclusive_bytes": 0, "history_bytes": 0,
            "restore_window": {"from_lsn": null, "from_time": null, "to_lsn": null, "to_time": null},
            "snapshots": [],
        }))
        .expect("a minimal timeline");
        info.backup = backup;
        info
    }

    #[test]
    fn failing_archiving_says_why_and_what_the_node_keeps() {
        let mut conds = Vec::new();
        let failing = BackupStatus {
            repository: "s3://bank/prod at s3.example:443".into(),
            healthy: false,
            error: Some("the repository does not answer: connection refused".into()),
            archived_to: None,
            archived_at: None,
            backlog_bytes: 48 << 20,
            newest_backup: None,
            backups: Vec::new(),
        };
        update(
            &mut conds,
            &info(Some(failing.clone())),
            None,
            "ramify-storage-0",
            Some(3),
        );
        let c = &conds[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("BackupHealthy", "False")
        );
        assert_eq!(c.reason, "ArchivingFails");
        assert!(c.message.contains("connection refused"), "{}", c.message);
        assert!(
            c.message.contains("48MiB of WAL kept on the node"),
            "{}",
            c.message
        );
        // Healthy again, then no longer kept: the condition follows, then goes.
        let healthy = BackupStatus {
            healthy: true,
            error: None,
            backlog_bytes: 0,
            ..failing
        };
        update(
            &mut conds,
            &info(Some(healthy)),
            None,
            "ramify-storage-0",
            Some(3),
        );
        assert_eq!(conds[0].status, "True");
        let m = conds[0].message.clone();
        assert!(m.contains("its parent's and its own WAL"), "{m}");
        assert!(
            !m.contains(" at 20"),
            "no time that changes on every pass: {m}"
        );
        update(&mut conds, &info(None), None, "ramify-storage-0", Some(3));
        assert!(conds.is_empty());
        // Asked for, but the node keeps nothing: said so.
        update(
            &mut conds,
            &info(None),
            Some(true),
            "ramify-storage-0",
            Some(3),
        );
        assert_eq!(
            (conds[0].status.as_str(), conds[0].reason.as_str()),
            ("False", "NoRepository")
        );
        assert!(conds[0].message.contains("ramify-storage-0"));
    }
}
