//! The state "at latest" of a timeline whose compute is stopped, taken safely against a
//! compute that starts meanwhile (the proxy or the operator waking the branch).
//!
//! A stopped PGDATA is cloned as it is, without Postgres's backup protocol: nobody runs
//! on it, so a file-by-file clone is a consistent copy. But nothing stops a wake during the
//! clone, and the copy is then torn: files cloned before the start hold the stopped state,
//! files cloned after hold what the new compute wrote since, while the cloned `pg_control`
//! may still say "shut down", so the copy starts without any replay and is silently
//! corrupt (rows whose transaction ids are past the copy's next transaction id, relation
//! pages newer than its WAL).
//!
//! The guard is optimistic and needs nothing from the computes (in Kubernetes they run in
//! other Pods, so there is no lock they could share with the node). Every Postgres start
//! first writes `postmaster.pid` (created, or rewritten over a stale one with its own pid
//! and start time) and then rewrites `global/pg_control` (state, time) before it changes
//! anything else; it rewrites `postmaster.pid` again as its sockets come up. So both files
//! are read, byte for byte, before and after the clone, and the clone's own `pg_control`
//! is compared too: equal everywhere, with no compute answering on the timeline's socket
//! and no young `postmaster.pid` of a start (or stop) in progress, means nobody ran on
//! that PGDATA while it was cloned, and the copy is the stopped state. Anything else
//! removes the copy, waits for the woken compute to accept connections and takes the
//! running compute's path (a base backup) instead — or, if the compute has gone again,
//! clones anew. A torn copy is never returned.

use super::fork::Backup;
use super::*;

/// A `postmaster.pid` not (yet) saying "ready", written this recently, may belong to a
/// Postgres still starting up (it writes the file before its sockets exist, and its
/// status line only once it serves) or shutting down. An older one, or one saying
/// "ready" with no compute answering on the socket, is left over from an unclean stop,
/// which the stopped clone handles with crash recovery.
const STARTING_GRACE: Duration = Duration::from_secs(30);

/// How long a fork or snapshot waits for a compute that woke during its clone to accept
/// connections (crash recovery of a compute stopped uncleanly included).
const WAKE_WAIT: Duration = Duration::from_secs(120);

/// What "at latest" was taken from.
pub(super) enum Latest {
    /// A clone of the stopped PGDATA, undisturbed; its `pg_control`.
    Stopped(pgcontrol::PgControl),
    /// A base backup of the compute, which woke during the clone of its stopped PGDATA.
    Backup { backup: Backup, port: u16 },
}

/// What a stopped PGDATA shows of any Postgres that starts on it.
pub(super) struct Marks {
    /// `global/pg_control`.
    pub(super) pg_control: Vec<u8>,
    /// `postmaster.pid`, absent after a clean stop.
    postmaster_pid: Option<Vec<u8>>,
    /// Age of `postmaster.pid`, when present.
    pid_age: Option<Duration>,
}

impl Marks {
    /// The marks without the age, which moves on with the clock.
    pub(super) fn same_files(&self, other: &Marks) -> bool {
        self.pg_control == other.pg_control && self.postmaster_pid == other.postmaster_pid
    }

    /// Why a Postgres may be starting (or stopping) on this PGDATA, if it may.
    pub(super) fn starting(&self) -> Option<String> {
        let (pid, age) = (self.postmaster_pid.as_ref()?, self.pid_age?);
        // Line 8 of postmaster.pid: the postmaster's status (Postgres 10 and later).
        let status = String::from_utf8_lossy(pid)
            .lines()
            .nth(7)
            .map(|l| l.trim().to_string())
            .unwrap_or_default();
        if age >= STARTING_GRACE || status == "ready" || status == "standby" {
            return None;
        }
        Some(format!(
            "postmaster.pid, written {} ms ago, says {:?}: a compute is starting or stopping",
            age.as_millis(),
            if status.is_empty() {
                "no status yet"
            } else {
                status.as_str()
            }
        ))
    }
}

impl Node {
    /// The state at latest of timeline `id` (its directory `tdir`), whose compute was
    /// stopped when the caller planned, in the new directory `dest` (its PGDATA): a clone
    /// of the stopped PGDATA, or, when a compute starts meanwhile, a base backup of it
    /// labelled `label` (`fast`: with a fast checkpoint). See the module doc for why a
    /// torn copy cannot come out of here.
    pub(super) async fn latest_of_stopped(
        &self,
        id: TimelineId,
        tdir: &TimelineDir,
        dest: &Path,
        label: &str,
        fast: bool,
    ) -> Result<Latest, NodeError> {
        let deadline = Instant::now() + WAKE_WAIT;
        loop {
            let why = match self.clone_if_stopped(id, tdir, dest).await? {
                Ok(control) => return Ok(Latest::Stopped(control)),
                Err(why) => why,
            };
            info!(timeline = %id, why = %why, "the compute woke while its stopped PGDATA was being cloned: the copy is discarded; taking a base backup of the compute instead");
            // Wait until the compute serves (then back it up), or has gone again (then
            // clone anew).
            loop {
                if let Some(r) = self.running(id).await {
                    if self.connect_compute(id, r.port).await.is_ok() {
                        let backup = self.backup_into(tdir, r.port, dest, label, fast).await?;
                        return Ok(Latest::Backup {
                            backup,
                            port: r.port,
                        });
                    }
                } else if self.marks(tdir)?.starting().is_none() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(NodeError::Conflict(format!(
                        "the compute of timeline {id} started while its stopped data directory was being cloned and has not accepted connections for {} s; retry once it is up (or stopped)",
                        WAKE_WAIT.as_secs()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Clones the PGDATA of `tdir` to `dest` if, and only if, nobody runs on it meanwhile:
    /// `Ok(Ok(its pg_control))`, or `Ok(Err(why not))` with `dest` removed.
    async fn clone_if_stopped(
        &self,
        id: TimelineId,
        tdir: &TimelineDir,
        dest: &Path,
    ) -> Result<Result<pgcontrol::PgControl, String>, NodeError> {
        let before = self.marks(tdir)?;
        if let Some(why) = before.starting() {
            return Ok(Err(why));
        }
        if self.running(id).await.is_some() {
            return Ok(Err("a compute answers on the timeline's socket".into()));
        }
        let method = self.clone_method;
        let (parent, name) = self.open_parent(dest)?;
        let src = self.open_dir(&tdir.pgdata())?;
        let (parent, name) = tokio::task::spawn_blocking(move || {
            clone::clone_tree(&src, &parent, &name, method, &|rel: &Path, is_dir| {
                if is_dir && rel == Path::new("base") {
                    // Half the tree cloned, the relation files not yet.
                    crate::failpoint::hit("clone.stopped.mid");
                }
                pgdata::stopped_exclude(rel, is_dir)
            })
            .map(|_| (parent, name))
        })
        .await??;
        let after = self.marks(tdir)?;
        let copied = self
            .open_dir(&dest.join("global"))?
            .read("pg_control")
            .map_err(CloneError::from)?;
        let why = if !after.same_files(&before) {
            Some("pg_control or postmaster.pid changed during the clone".to_string())
        } else if copied != before.pg_control {
            Some("the cloned pg_control differs from the one read before the clone".into())
        } else if self.running(id).await.is_some() {
            Some("a compute answers on the timeline's socket".into())
        } else {
            None
        };
        if let Some(why) = why {
            parent.remove_tree(&name).map_err(CloneError::from)?;
            return Ok(Err(why));
        }
        Ok(Ok(pgcontrol::parse(
            &copied,
            &dest.join("global/pg_control"),
        )?))
    }

    pub(super) fn marks(&self, tdir: &TimelineDir) -> Result<Marks, NodeError> {
        let pg = self.open_dir(&tdir.pgdata())?;
        let pg_control = pg
            .open_dir("global")
            .and_then(|g| g.read("pg_control"))
            .map_err(CloneError::from)?;
        let (postmaster_pid, pid_age) =
            match pg.lstat("postmaster.pid").map_err(CloneError::from)? {
                None => (None, None),
                Some(st) => {
                    let mtime = std::time::UNIX_EPOCH
                        + Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
                    let age = std::time::SystemTime::now()
                        .duration_since(mtime)
                        .unwrap_or_default();
                    match pg.read("postmaster.pid") {
                        Ok(bytes) => (Some(bytes), Some(age)),
                        // Removed since (a compute stopping): compares as absent.
                        Err(e) if e.is_not_found() => (None, None),
                        Err(e) => return Err(CloneError::from(e).into()),
                    }
                }
            };
        Ok(Marks {
            pg_control,
            postmaster_pid,
            pid_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks(pid: Option<&str>, age_s: u64) -> Marks {
        Marks {
            pg_control: vec![1, 2, 3],
            postmaster_pid: pid.map(|p| p.as_bytes().to_vec()),
            pid_age: pid.map(|_| Duration::from_secs(age_s)),
        }
    }

    const EARLY: &str = "4242\n/data/pgdata\n1764870000\n5432\n\n";
    const READY: &str =
        "4242\n/data/pgdata\n1764870000\n5432\n/data/run\n127.0.0.1\n  5432001    32768\nready   \n";
    const STARTING: &str =
        "4242\n/data/pgdata\n1764870000\n5432\n/data/run\n127.0.0.1\n  5432001    32768\nstarting\n";

    #[test]
    fn a_young_postmaster_pid_that_does_not_say_ready_is_a_start_in_progress() {
        assert!(marks(None, 0).starting().is_none());
        assert!(marks(Some(EARLY), 1).starting().is_some());
        assert!(marks(Some(STARTING), 1)
            .starting()
            .is_some_and(|w| w.contains("\"starting\"")));
        // Left by a crash: "ready" (its sockets would answer if it lived), or old.
        assert!(marks(Some(READY), 1).starting().is_none());
        assert!(marks(Some(STARTING), 31).starting().is_none());
    }

    #[test]
    fn the_age_does_not_count_when_comparing() {
        assert!(marks(Some(READY), 1).same_files(&marks(Some(READY), 9)));
        assert!(!marks(Some(READY), 1).same_files(&marks(Some(STARTING), 1)));
        assert!(!marks(None, 1).same_files(&marks(Some(READY), 1)));
    }
}
