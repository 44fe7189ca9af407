//! The restore window: which snapshots can serve a fork at a given point, and what
//! garbage collection may delete. Pure functions over the stored snapshot list.

use chrono::{DateTime, Utc};
use ramify_api::{Lsn, SnapshotKind};

use crate::meta::SnapshotRecord;
use crate::wal::SEGMENT_SIZE;

/// Snapshots whose following WAL is all still archived (`wal_kept_from`), so any point
/// after them can be reached. Oldest first.
pub fn usable(snaps: &[SnapshotRecord], wal_kept_from: Option<Lsn>) -> Vec<&SnapshotRecord> {
    snaps
        .iter()
        .filter(|s| wal_kept_from.is_none_or(|k| s.info.start_lsn >= k))
        .collect()
}

/// The newest usable snapshot at or before `lsn`.
pub fn base_for_lsn(
    snaps: &[SnapshotRecord],
    wal_kept_from: Option<Lsn>,
    lsn: Lsn,
) -> Option<&SnapshotRecord> {
    usable(snaps, wal_kept_from)
        .into_iter()
        .filter(|s| s.info.end_lsn <= lsn)
        .max_by_key(|s| s.info.end_lsn)
}

/// The newest usable snapshot at or before `time`.
pub fn base_for_time(
    snaps: &[SnapshotRecord],
    wal_kept_from: Option<Lsn>,
    time: DateTime<Utc>,
) -> Option<&SnapshotRecord> {
    usable(snaps, wal_kept_from)
        .into_iter()
        .filter(|s| s.info.time <= time)
        .max_by_key(|s| s.info.end_lsn)
}

/// What garbage collection removes from one timeline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcPlan {
    /// Snapshots to delete.
    pub snapshots: Vec<String>,
    /// New `wal_kept_from`: archived segments wholly before it are deleted.
    pub wal_kept_from: Option<Lsn>,
}

impl GcPlan {
    /// Archive segments numbered below this are not needed.
    pub fn first_needed_segment(&self) -> Option<u64> {
        self.wal_kept_from.map(|l| l.segment(SEGMENT_SIZE))
    }
}

/// Keeps every snapshot taken inside the window plus the newest one before it (the base
/// of forks near the window's start) and the WAL from that base on. Manual snapshots are
/// the user's and stay until deleted (a fork `at` them needs no archived WAL).
pub fn plan_gc(
    snaps: &[SnapshotRecord],
    wal_kept_from: Option<Lsn>,
    window_start: DateTime<Utc>,
) -> GcPlan {
    let usable = usable(snaps, wal_kept_from);
    let Some(base) = usable
        .iter()
        .filter(|s| s.info.time <= window_start)
        .max_by_key(|s| s.info.end_lsn)
    else {
        return GcPlan {
            snapshots: vec![],
            wal_kept_from,
        };
    };
    let snapshots = snaps
        .iter()
        .filter(|s| s.info.kind != SnapshotKind::Manual && s.info.end_lsn < base.info.end_lsn)
        .map(|s| s.info.name.clone())
        .collect();
    GcPlan {
        snapshots,
        wal_kept_from: Some(base.info.start_lsn.max(wal_kept_from.unwrap_or_default())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use ramify_api::SnapshotInfo;

    fn snap(name: &str, kind: SnapshotKind, start: u64, end: u64, age_s: i64) -> SnapshotRecord {
        SnapshotRecord {
            info: SnapshotInfo {
                name: name.into(),
                kind,
                start_lsn: Lsn(start),
                end_lsn: Lsn(end),
                time: Utc::now() - Duration::seconds(age_s),
                pg_timeline: 1,
            },
            consistent_lsn: Lsn(end),
            after_lsn: None,
            plain_start: false,
        }
    }

    #[test]
    fn picks_newest_base_at_or_before_target() {
        let s = vec![
            snap("a", SnapshotKind::Fork, 10, 20, 300),
            snap("b", SnapshotKind::Periodic, 100, 120, 200),
            snap("c", SnapshotKind::Periodic, 200, 220, 100),
        ];
        assert_eq!(base_for_lsn(&s, None, Lsn(150)).unwrap().info.name, "b");
        assert_eq!(base_for_lsn(&s, None, Lsn(120)).unwrap().info.name, "b");
        assert!(base_for_lsn(&s, None, Lsn(19)).is_none());
        assert_eq!(
            base_for_lsn(&s, Some(Lsn(100)), Lsn(150))
                .unwrap()
                .info
                .name,
            "b"
        );
        assert!(base_for_lsn(&s, Some(Lsn(100)), Lsn(50)).is_none());
        let t = Utc::now() - Duration::seconds(150);
        assert_eq!(base_for_time(&s, None, t).unwrap().info.name, "b");
    }

    #[test]
    fn gc_keeps_window_and_one_base_before_it() {
        let s = vec![
            snap("a", SnapshotKind::Fork, 10, 20, 300),
            snap("m", SnapshotKind::Manual, 50, 60, 250),
            snap("b", SnapshotKind::Periodic, 100, 120, 200),
            snap("c", SnapshotKind::Periodic, 200, 220, 100),
        ];
        let p = plan_gc(&s, None, Utc::now() - Duration::seconds(150));
        assert_eq!(p.snapshots, vec!["a".to_string()]);
        assert_eq!(p.wal_kept_from, Some(Lsn(100)));
        // Nothing before the window: nothing to delete.
        let p = plan_gc(&s, None, Utc::now() - Duration::seconds(1000));
        assert!(p.snapshots.is_empty());
        assert_eq!(p.wal_kept_from, None);
    }
}
