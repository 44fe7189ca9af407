//! What a clone of PGDATA leaves out, and the files that make Postgres recover a clone.

use std::fs;
use std::io;
use std::path::{Component, Path};

use ramify_api::Lsn;

use crate::beneath::{BeneathError, Dir};

/// File names left out of every clone.
const NEVER: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "recovery.signal",
    "standby.signal",
];

/// Directories whose contents a backup leaves out (Postgres's backup docs): WAL is added
/// separately, and the rest is rebuilt or meaningless on the new server.
const BACKUP_EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];

fn name_of(rel: &Path) -> &str {
    rel.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

/// Exclusions for a clone taken in backup mode from a running compute.
pub fn backup_exclude(rel: &Path, is_dir: bool) -> bool {
    let name = name_of(rel);
    if name == "pg_internal.init" || name.starts_with("pgsql_tmp") {
        return true;
    }
    let parts: Vec<_> = rel.components().collect();
    if parts.len() == 1 && !is_dir && NEVER.contains(&name) {
        return true;
    }
    if parts.len() >= 2 {
        if let Component::Normal(top) = parts[0] {
            let top = top.to_str().unwrap_or("");
            if BACKUP_EMPTY_DIRS.contains(&top) {
                // Keep pg_wal/archive_status itself: Postgres expects it.
                return !(top == "pg_wal"
                    && parts.len() == 2
                    && is_dir
                    && name == "archive_status");
            }
        }
    }
    false
}

/// Exclusions for a clone of a stopped compute's PGDATA (WAL included: it may be needed
/// for crash recovery after an unclean stop).
pub fn stopped_exclude(rel: &Path, is_dir: bool) -> bool {
    let top_level_file = rel.components().count() == 1 && !is_dir;
    (top_level_file && NEVER.contains(&name_of(rel)))
        || name_of(rel) == "pg_internal.init"
        || name_of(rel).starts_with("pgsql_tmp")
}

/// Where recovery of a clone stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// No archive recovery: the clone of a stopped compute starts as it is (crash recovery
    /// replays its own `pg_wal` if the stop was unclean) and stays on its timeline.
    /// Archive recovery to `immediate` would be wrong here: a crashed primary counts as
    /// consistent at its last checkpoint and would stop there, losing later commits; and
    /// after a clean shutdown no record follows the consistent point, which Postgres 13+
    /// rejects ("recovery ended before configured recovery target was reached").
    None,
    /// As soon as the clone is consistent (end of its backup).
    Immediate,
    /// After the WAL record at this position.
    Lsn(Lsn),
}

/// The generated include with Ramify's recovery settings.
pub const RECOVERY_CONF: &str = "ramify.recovery.conf";

/// Renders the recovery settings: all WAL is already in `pg_wal`, so `restore_command`
/// (required for archive recovery) finds nothing; the highest timeline in `pg_wal` is
/// followed; the new server promotes at the target. `hot_standby = off` keeps clients
/// out until promotion, so nobody ever sees a half-recovered, read-only branch.
pub fn render_recovery_conf(target: RecoveryTarget) -> String {
    let target = match target {
        RecoveryTarget::None => return String::new(),
        RecoveryTarget::Immediate => "recovery_target = 'immediate'".to_string(),
        RecoveryTarget::Lsn(l) => {
            format!("recovery_target_lsn = '{l}'\nrecovery_target_inclusive = on")
        }
    };
    format!(
        "# Written by ramify-storage when this timeline was forked. Only read while\n\
         # recovery.signal exists, i.e. until the first start promotes the fork.\n\
         restore_command = 'false'\n\
         {target}\n\
         recovery_target_timeline = 'latest'\n\
         recovery_target_action = 'promote'\n\
         hot_standby = off\n\
         recovery_init_sync_method = 'fsync'\n"
    )
}

/// Makes `pgdata` recover to `target` and promote on its next start (or, for
/// [`RecoveryTarget::None`], start plainly).
pub fn prepare_recovery(pgdata: &Path, target: RecoveryTarget) -> io::Result<()> {
    if target == RecoveryTarget::None {
        for f in [RECOVERY_CONF, "recovery.signal"] {
            match fs::remove_file(pgdata.join(f)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        return Ok(());
    }
    fs::write(pgdata.join(RECOVERY_CONF), render_recovery_conf(target))?;
    ramify_compute::settings::ensure_include(pgdata, RECOVERY_CONF).map_err(io::Error::other)?;
    fs::write(pgdata.join("recovery.signal"), b"")?;
    Ok(())
}

/// Writes the `backup_label` (and `tablespace_map`, when non-empty) `pg_backup_stop` returned
/// into the open PGDATA `pgdata`. A snapshot's staging directory lies inside the compute's
/// mount, so the files are created new, never written through a planted link.
pub fn write_backup_files(
    pgdata: &Dir,
    label: &str,
    tablespace_map: &str,
) -> Result<(), BeneathError> {
    pgdata.write("backup_label", label.as_bytes(), false)?;
    if !tablespace_map.is_empty() {
        pgdata.write("tablespace_map", tablespace_map.as_bytes(), false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_exclusions_follow_postgres_docs() {
        let ex = |p: &str, d: bool| backup_exclude(Path::new(p), d);
        assert!(ex("postmaster.pid", false));
        assert!(ex("pg_wal/000000010000000000000001", false));
        assert!(!ex("pg_wal/archive_status", true));
        assert!(ex(
            "pg_wal/archive_status/000000010000000000000001.ready",
            false
        ));
        assert!(ex("pg_replslot/slot1", true));
        assert!(ex("base/5/pgsql_tmp123.0", false));
        assert!(ex("global/pg_internal.init", false));
        assert!(!ex("pg_wal", true));
        assert!(!ex("base/5/16384", false));
        assert!(!ex("global/pg_control", false));
        assert!(!ex("postgresql.conf", false));
        assert!(!stopped_exclude(
            Path::new("pg_wal/000000010000000000000001"),
            false
        ));
        assert!(stopped_exclude(Path::new("postmaster.pid"), false));
    }

    #[test]
    fn recovery_conf_and_include_are_idempotent() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("postgresql.conf"), "shared_buffers = 128MB").unwrap();
        prepare_recovery(t.path(), RecoveryTarget::Lsn(Lsn(0x3000028))).unwrap();
        prepare_recovery(t.path(), RecoveryTarget::Immediate).unwrap();
        prepare_recovery(t.path(), RecoveryTarget::Immediate).unwrap();
        let conf = fs::read_to_string(t.path().join("postgresql.conf")).unwrap();
        assert_eq!(
            conf.matches("include_if_exists = 'ramify.recovery.conf'")
                .count(),
            1
        );
        assert!(conf.starts_with("shared_buffers = 128MB\n"));
        let rec = fs::read_to_string(t.path().join(RECOVERY_CONF)).unwrap();
        assert!(rec.contains("recovery_target = 'immediate'"));
        assert!(!rec.contains("recovery_target_lsn"));
        assert!(t.path().join("recovery.signal").exists());
        prepare_recovery(t.path(), RecoveryTarget::None).unwrap();
        assert!(!t.path().join("recovery.signal").exists());
        assert!(!t.path().join(RECOVERY_CONF).exists());
        assert!(render_recovery_conf(RecoveryTarget::Lsn(Lsn(0x3000028)))
            .contains("recovery_target_lsn = '0/3000028'\nrecovery_target_inclusive = on"));
    }
}
