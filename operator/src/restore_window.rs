//! `status.restoreWindow` of a DatabaseBranch: the part of its history a restore, or a
//! child `at` a time or LSN, can reach, as the storage node reports it.

use ramify_api::{ComputeState, TimelineInfo};
use ramify_crd::RestoreWindowStatus;

/// The branch's restore window from its timeline's. The end is given only while the
/// compute is stopped (its last checkpoint): while it runs the window reaches the present,
/// and a status that changed with every write would make each status patch trigger the
/// next reconcile.
pub fn status(info: &TimelineInfo) -> Option<RestoreWindowStatus> {
    let w = &info.restore_window;
    if w.from_lsn.is_none() && w.from_time.is_none() {
        return None;
    }
    let stopped = info.compute == ComputeState::Stopped;
    Some(RestoreWindowStatus {
        from_time: w.from_time,
        from_lsn: w.from_lsn.map(|l| l.to_string()),
        to_time: w.to_time.filter(|_| stopped),
        to_lsn: w.to_lsn.filter(|_| stopped).map(|l| l.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ramify_api::{Lsn, RestoreWindow, TimelineState};

    fn info(compute: ComputeState, window: RestoreWindow) -> TimelineInfo {
        let json = serde_json::json!({
            "id": "6829c9af-c9ca-4a0d-aa71-c4d9b6da6d3f",
            "state": "ready",
            "compute": "stopped",
            "created_at": "2026-12-04T18:22:53Z",
            "pgdata": "/d/pgdata", "archive": "/d/wal", "run_dir": "/d/run",
            "archive_command": "true",
            "logical_bytes": 0, "exclusive_bytes": 0, "history_bytes": 0,
            "restore_window": {"from_lsn": null, "from_time": null, "to_lsn": null, "to_time": null},
            "snapshots": [],
        });
        let mut i: TimelineInfo = serde_json::from_value(json).expect("a TimelineInfo");
        assert_eq!(i.state, TimelineState::Ready);
        i.compute = compute;
        i.restore_window = window;
        i
    }

    fn window() -> RestoreWindow {
        RestoreWindow {
            from_lsn: Some(Lsn(0x17414F8)),
            from_time: Some(Utc.with_ymd_and_hms(2026, 12, 4, 18, 22, 53).unwrap()),
            to_lsn: Some(Lsn(0x3000000)),
            to_time: Some(Utc.with_ymd_and_hms(2026, 12, 4, 18, 30, 0).unwrap()),
        }
    }

    #[test]
    fn a_suspended_branch_shows_both_ends() {
        let s = status(&info(ComputeState::Stopped, window())).unwrap();
        assert_eq!(s.from_lsn.as_deref(), Some("0/17414F8"));
        assert_eq!(s.to_lsn.as_deref(), Some("0/3000000"));
        assert_eq!(s.from_time, window().from_time);
        assert_eq!(s.to_time, window().to_time);
    }

    #[test]
    fn a_running_branch_shows_its_start_only() {
        let s = status(&info(ComputeState::Running, window())).unwrap();
        assert_eq!(s.from_lsn.as_deref(), Some("0/17414F8"));
        assert_eq!((s.to_lsn, s.to_time), (None, None));
    }

    #[test]
    fn a_root_made_empty_by_an_older_release_has_none() {
        let empty = RestoreWindow {
            from_lsn: None,
            from_time: None,
            to_lsn: None,
            to_time: None,
        };
        assert_eq!(status(&info(ComputeState::Stopped, empty)), None);
    }
}
