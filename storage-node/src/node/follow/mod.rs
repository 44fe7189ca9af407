//! Following roots: a root built from an existing Postgres and kept up to date with it,
//! whose history is forkable like any other timeline's.
//!
//! - [`physical`]: `pg_basebackup`, then a hot standby streaming the source's WAL.
//! - [`logical`]: `pg_dump --schema-only`, then a subscription to a publication.
//!
//! The source is only ever read: the node asks it for its version and settings and the
//! slot it names, and copies it. The slot (physical, when asked for) or the
//! subscription's slot (logical) is the one object it creates there.

use ramify_api::names::SOURCE_URI_PARAMS as URI_PARAMS;
use ramify_api::{FollowMode, FollowSource};
use ramify_compute::PgUser;

use super::*;

pub(super) mod logical;
mod physical;
pub(super) mod warm;

/// The password file a following root's compute names in `primary_conninfo`, in `run/`.
pub const PASSFILE: &str = "source.pass";

/// How long the checks wait for the source to answer.
const CONNECT_TIMEOUT_SECS: u32 = 10;

/// Progress of an initial copy, for logs and `GET /v1/status`.
#[derive(Debug, Clone)]
pub(super) struct CopyProgress {
    pub done_bytes: u64,
    pub started_at: DateTime<Utc>,
}

impl Node {
    fn set_copy_progress(&self, id: TimelineId, p: Option<CopyProgress>) {
        let mut m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Some(p) => {
                m.insert(id, p);
            }
            None => {
                m.remove(&id);
            }
        }
    }

    /// `GET /v1/copies`: initial copies under way.
    pub fn copies(&self) -> Vec<ramify_api::CopyProgress> {
        let m = self.copies.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(id, p)| ramify_api::CopyProgress {
                timeline: *id,
                bytes_done: p.done_bytes,
                started_at: p.started_at,
            })
            .collect()
    }

    /// Every following root's replication state for `GET /metrics`, each read from its
    /// compute with a short deadline so one stuck compute never stalls a scrape.
    pub async fn follower_samples(&self) -> Result<Vec<crate::metrics::FollowerSample>, NodeError> {
        let mut samples = Vec::new();
        for rec in self.meta.all()? {
            let Some(source) = rec.request.follow.as_ref() else {
                continue;
            };
            if rec.phase != Phase::Ready {
                continue;
            }
            let running = self.running(rec.id).await;
            let status = tokio::time::timeout(
                Duration::from_secs(2),
                self.follow_info(&rec, running.as_ref()),
            )
            .await
            .ok()
            .flatten()
            .and_then(|f| f.status);
            samples.push(crate::metrics::FollowerSample {
                timeline: rec.id.to_string(),
                mode: match source.mode {
                    FollowMode::Physical => "physical",
                    FollowMode::Logical => "logical",
                },
                status,
            });
        }
        Ok(samples)
    }

    /// The follow view of a following root: its source, and its replication state read
    /// from the running compute (`None` when it is stopped or not answering yet).
    pub(super) async fn follow_info(
        &self,
        rec: &TimelineRecord,
        running: Option<&Running>,
    ) -> Option<FollowInfo> {
        let source = rec.request.follow.as_ref()?;
        let status = match running {
            Some(r) => match self.connect_compute(rec.id, r.port).await {
                Ok(c) => match match source.mode {
                    FollowMode::Physical => control::follow_status(&c).await,
                    FollowMode::Logical => {
                        control::subscription_status(&c, logical::SUBSCRIPTION).await
                    }
                } {
                    Ok(mut s) => {
                        if !s.streaming {
                            s.problem = Some(self.follow_problem(rec.id, source.mode));
                        }
                        Some(s)
                    }
                    Err(e) => {
                        tracing::debug!(timeline = %rec.id, error = %e, "no replication state");
                        None
                    }
                },
                Err(_) => None,
            },
            None => None,
        };
        Some(FollowInfo {
            conninfo: source.conninfo.clone(),
            slot: match source.mode {
                FollowMode::Physical => source.slot.clone(),
                FollowMode::Logical => Some(logical::slot_name(rec.id, source)),
            },
            mode: source.mode,
            publication: source.publication.clone(),
            passfile: PASSFILE.into(),
            status,
            warm_standby: source
                .mode
                .is_physical()
                .then(|| self.warm_state(rec.id))
                .flatten(),
        })
    }

    /// Why a following root's compute is not streaming, from the last replication error
    /// in its log, with what to do about it.
    fn follow_problem(&self, id: TimelineId, mode: FollowMode) -> String {
        let log = self
            .open_dir(&self.dir(id).run())
            .and_then(|d| {
                d.read(ramify_compute::process::SERVER_LOG)
                    .map_err(|e| CloneError::from(e).into())
            })
            .map(|b| String::from_utf8_lossy(&b[b.len().saturating_sub(64 * 1024)..]).into_owned())
            .unwrap_or_default();
        let log = since_last_start(&log);
        match mode {
            FollowMode::Physical => diagnose_log(log),
            FollowMode::Logical => logical::diagnose_log(log),
        }
    }

    /// This node's Postgres binaries and its `initdb`, which a following root needs.
    fn follow_bin(&self) -> Result<(ramify_compute::PgBin, PathBuf), NodeError> {
        let (Some(initdb), Some(_)) = (self.cfg.initdb.clone(), self.cfg.waldump.as_ref()) else {
            return Err(NodeError::Conflict(
                "a following root needs this node's Postgres binaries (pg_basebackup, pg_dump, psql): start it with --pg-bin DIR".into(),
            ));
        };
        let bin = ramify_compute::PgBin::from_dir(initdb.parent().unwrap_or(Path::new("/")))
            .map_err(|e| NodeError::Conflict(format!("Postgres binaries: {e}")))?;
        Ok((bin, initdb))
    }

    /// Whether `id` is a logical follower or descends from one (its catalog then carries
    /// the follower's subscription).
    pub(in crate::node) fn below_logical_follower(&self, mut id: TimelineId) -> bool {
        loop {
            let Ok(rec) = self.record(id) else {
                return false;
            };
            if logical::logical_source(&rec).is_some() {
                return true;
            }
            match rec.parent {
                Some(p) => id = p,
                None => return false,
            }
        }
    }
}

/// Whether `rec` is a physical follower: a hot standby, which writes no WAL of its own.
pub(in crate::node) fn is_standby(rec: &TimelineRecord) -> bool {
    rec.request
        .follow
        .as_ref()
        .is_some_and(|f| f.mode.is_physical())
}

/// Refuses a source the node could only misuse: an empty connection string, a password
/// inside it (it would be stored and shown), a slot name Postgres would refuse.
pub(super) fn validate(source: &FollowSource) -> Result<(), NodeError> {
    let c = source.conninfo.trim();
    if c.is_empty() {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" is empty: name the source, e.g. postgresql://replicator@db.example:5432/postgres".into(),
        ));
    }
    if c.contains('\0') || c.contains('\n') {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" must be one line".into(),
        ));
    }
    if conninfo_has_password(c) {
        return Err(NodeError::Invalid(
            "\"follow.conninfo\" contains a password: pass it in \"follow.password\" instead, so it is never stored or shown".into(),
        ));
    }
    check_uri(c).map_err(|e| NodeError::Invalid(format!("\"follow.conninfo\": {e}")))?;
    if let Some(slot) = &source.slot {
        let ok = !slot.is_empty()
            && slot.len() <= 63
            && slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(NodeError::Invalid(format!(
                "slot name {slot:?} is invalid: use 1-63 lower-case letters, digits and underscores"
            )));
        }
    }
    match (source.mode, &source.publication) {
        (FollowMode::Physical, Some(_)) => {
            return Err(NodeError::Invalid(
                "\"follow.publication\" is only for mode logical: a physical follower copies everything".into(),
            ))
        }
        (FollowMode::Logical, None) => {
            return Err(NodeError::Invalid(
                "mode logical needs \"follow.publication\": the source's publication to subscribe to (CREATE PUBLICATION NAME FOR ALL TABLES on the source)".into(),
            ))
        }
        (FollowMode::Logical, Some(p)) => {
            ramify_api::names::validate_sql_identifier("publication", p)
                .map_err(NodeError::Invalid)?
        }
        (FollowMode::Physical, None) => {}
    }
    if source
        .password
        .as_deref()
        .is_some_and(|p| p.contains(['\0', '\n']))
    {
        return Err(NodeError::Invalid(
            "\"follow.password\" must not contain a line break or NUL".into(),
        ));
    }
    Ok(())
}

/// Checks that `c` is a `postgresql://` URI naming one network host (a DNS name or an IP
/// address, never a socket directory) and only parameters in [`URI_PARAMS`].
fn check_uri(c: &str) -> Result<(), String> {
    let rest = c
        .strip_prefix("postgresql://")
        .or_else(|| c.strip_prefix("postgres://"))
        .ok_or("use a URI: postgresql://ROLE@HOST:PORT/DATABASE")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing ]")?;
            h.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{h:?} is not an IPv6 address"))?;
            (h, after.strip_prefix(':').unwrap_or(after))
        }
        None => hostport.split_once(':').unwrap_or((hostport, "")),
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
    if !host_ok {
        return Err(format!(
            "the host must be a DNS name or an IP address (got {host:?}; one host, no socket directory)"
        ));
    }
    if !port.is_empty() && port.parse::<u16>().is_err() {
        return Err(format!("port {port:?} is not a port number"));
    }
    if let Some((_, query)) = tail.split_once('?') {
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let key = kv.split('=').next().unwrap_or("");
            if !URI_PARAMS.contains(&key) {
                return Err(format!(
                    "parameter {key:?} is not accepted (accepted: {})",
                    URI_PARAMS.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Whether a libpq connection string carries a password (`user:secret@` in a URI, or a
/// `password` parameter in either form).
pub fn conninfo_has_password(c: &str) -> bool {
    let lower = c.to_ascii_lowercase();
    if let Some(rest) = lower
        .strip_prefix("postgresql://")
        .or_else(|| lower.strip_prefix("postgres://"))
    {
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                return true;
            }
        }
        return rest
            .split_once('?')
            .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")));
    }
    lower
        .split_whitespace()
        .any(|w| w.starts_with("password=") || w.starts_with("password ="))
        || lower.contains("password =")
}

/// `psql` against the source as `application_name` (unaligned, tuples only, stopping at
/// the first error), `extra` parameters added to the connection string (such as
/// `replication=true`), its environment set by [`source_env`].
fn source_psql(
    bin: &ramify_compute::PgBin,
    source: &FollowSource,
    application_name: &str,
    extra: &[(&str, &str)],
) -> Result<tokio::process::Command, NodeError> {
    let psql = bin
        .psql()
        .ok_or_else(|| NodeError::Conflict("psql not found next to initdb".into()))?;
    let timeout = CONNECT_TIMEOUT_SECS.to_string();
    let mut params = extra.to_vec();
    params.extend([
        ("connect_timeout", timeout.as_str()),
        ("application_name", application_name),
    ]);
    let mut cmd = tokio::process::Command::new(psql);
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(ramify_compute::settings::append_conninfo(
            &source.conninfo,
            &params,
        ))
        .stdin(std::process::Stdio::null());
    source_env(&mut cmd, source);
    Ok(cmd)
}

/// Runs `cmd` (a program talking to the source, see [`source_env`]) to its end: its
/// standard output, or the source's refusal named by [`source_error`].
async fn source_output(cmd: &mut tokio::process::Command, what: &str) -> Result<String, NodeError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io_op(format!("run {what}")))?;
    if !out.status.success() {
        return Err(source_error(&String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The environment of a program talking to the source: the password (never on a
/// command line) and no password file of the node's own user.
fn source_env(cmd: &mut tokio::process::Command, source: &FollowSource) {
    cmd.env("PGPASSFILE", "/dev/null").env_remove("PGPASSWORD");
    if let Some(p) = &source.password {
        cmd.env("PGPASSWORD", p);
    }
    cmd.env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT_SECS.to_string());
}

/// Writes the libpq password file the standby's `primary_conninfo` names: mode 0600
/// (libpq ignores it otherwise), owned by the compute's user.
fn write_passfile(path: &Path, password: Option<&str>, user: &PgUser) -> Result<(), NodeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let line = match password {
        Some(p) => format!("*:*:*:*:{}\n", p.replace('\\', "\\\\").replace(':', "\\:")),
        None => String::new(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_op(format!("create {}", path.display())))?;
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io_op(format!("write {}", path.display())))?;
    user.chown(path)
        .map_err(ramify_compute::ProcessError::from)?;
    Ok(())
}

/// Bytes of the files below `dir` (links are not followed; entries that vanish while
/// it walks count as nothing).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match std::fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => tree_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

fn compute_tail(text: &str) -> String {
    ramify_compute::tail::last_lines(text, 8)
}

/// The source's refusal, named: what failed and what to change on the source.
fn source_error(output: &str) -> NodeError {
    let detail = output
        .lines()
        .rev()
        .find(|l| l.contains("FATAL") || l.contains("error:") || l.contains("ERROR"))
        .unwrap_or_else(|| output.lines().last().unwrap_or("no output"))
        .trim()
        .to_string();
    let lower = output.to_lowercase();
    let (unreachable, advice) = if lower.contains("password authentication failed")
        || lower.contains("no password supplied")
    {
        (false, "check the replication role's password")
    } else if lower.contains("no pg_hba.conf entry") {
        (false, "add a line like \"host replication <role> <this node's address>/32 scram-sha-256\" to the source's pg_hba.conf and reload it")
    } else if lower.contains("must be superuser or replication role")
        || lower.contains("permission denied to start wal sender")
        || lower.contains("must have replication")
    {
        (
            false,
            "give the role the REPLICATION attribute (ALTER ROLE <role> REPLICATION)",
        )
    } else if lower.contains("number of requested standby connections exceeds")
        || lower.contains("max_wal_senders")
    {
        (false, "raise max_wal_senders on the source (a physical follower holds one WAL sender, the initial copy two)")
    } else if lower.contains("incompatible server version") {
        (
            false,
            "follow it with a node whose Postgres major version matches the source's",
        )
    } else if lower.contains("replication slot") && lower.contains("already exists") {
        (false, "another slot of that name exists: name another slot, or drop the old one on the source")
    } else if lower.contains("connection refused")
        || lower.contains("could not translate host name")
        || lower.contains("timeout expired")
        || lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("server closed the connection unexpectedly")
    {
        (
            true,
            "check that the source runs and that this node can reach its address and port",
        )
    } else {
        (false, "see the message from the source above")
    };
    NodeError::Source {
        unreachable,
        message: format!("the source refused or failed the copy: {detail} — {advice}"),
    }
}

/// The part of a compute's server log its running Postgres wrote: the log is appended to
/// across starts, and what an earlier run said last (its WAL receiver ended by the
/// shutdown, say) is not why the present one is not streaming.
pub(super) fn since_last_start(log: &str) -> &str {
    log.rfind("starting PostgreSQL ").map_or(log, |i| {
        // From the start of that line.
        &log[log[..i].rfind('\n').map_or(0, |nl| nl + 1)..]
    })
}

/// Why a standby's WAL receiver is not streaming, from its server log's last word on it.
pub(super) fn diagnose_log(log: &str) -> String {
    // The message after the severity, never the line's prefix or a path in it (a
    // compute's socket path holds `timelines/`).
    let message = |l: &str| {
        l.split_once(":  ")
            .map(|(_, m)| m.trim())
            .unwrap_or(l.trim())
            .to_string()
    };
    let relevant = log.lines().rev().find(|l| {
        let m = message(l);
        (l.contains("FATAL") || l.contains("ERROR") || l.contains("LOG"))
            && (m.contains("primary")
                || m.contains("replication")
                || m.contains("WAL segment")
                || m.contains("WAL stream")
                || m.contains("authentication")
                || m.contains("pg_hba")
                || names_a_timeline(&m)
                || m.contains("wal receiver")
                || m.contains("walreceiver"))
    });
    let Some(line) = relevant else {
        return "not streaming from the source yet (no replication error in the compute's log)"
            .into();
    };
    let msg = message(line);
    let lower = msg.to_lowercase();
    let advice = if lower.contains("replication slot") && lower.contains("does not exist") {
        "the slot was dropped on the source: create it again there (SELECT pg_create_physical_replication_slot(...)) — WAL the source recycled meanwhile is lost to this follower, then create a new follower"
    } else if lower.contains("has already been removed") {
        "the source recycled WAL this follower had not received: create a new follower, and use a slot (--slot) so the source keeps it"
    } else if lower.contains("password authentication failed") {
        "the source no longer accepts the replication role's password: set it again with a new follower, or restore the old password on the source"
    } else if lower.contains("no pg_hba.conf entry") {
        "the source's pg_hba.conf no longer admits this node: add the replication line back and reload"
    } else if lower.contains("connection refused")
        || lower.contains("could not connect")
        || lower.contains("could not receive data")
        || lower.contains("closed the connection")
        || lower.contains("terminating walreceiver")
        || lower.contains("timeout")
    {
        "the source is unreachable or restarting: the follower retries every few seconds and catches up by itself"
    } else if names_a_timeline(&lower) {
        "the source switched timelines (a failover): the follower follows the newest timeline when the source's history allows it"
    } else {
        "see the compute's log"
    };
    format!("{msg} — {advice}")
}

/// Whether a Postgres message speaks of a timeline as Postgres words it (`timeline 2`,
/// `timeline history`), not a path that holds the word.
fn names_a_timeline(msg: &str) -> bool {
    msg.match_indices("timeline").any(|(i, _)| {
        let rest = &msg[i + "timeline".len()..];
        rest.starts_with(" history")
            || rest
                .strip_prefix(' ')
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_network_host_and_harmless_parameters_are_accepted() {
        for ok in [
            "postgresql://rep@db.example:5432/postgres",
            "postgres://rep@10.0.0.7/app?sslmode=require&application_name=x",
            "postgresql://rep@[::1]:5433/postgres",
            "postgresql://rep@prod-db.prod.svc.cluster.local",
        ] {
            assert!(check_uri(ok).is_ok(), "{ok}: {:?}", check_uri(ok));
        }
        for bad in [
            "host=db user=rep",
            "postgresql://rep@%2Fdata%2Ftimelines%2Fx%2Frun/postgres",
            "postgresql://rep@/postgres",
            "postgresql:///postgres?host=/data/timelines/x/run",
            "postgresql://rep@db/postgres?passfile=/etc/shadow",
            "postgresql://rep@db/postgres?sslkey=/data/x",
            "postgresql://rep@db/postgres?service=x",
            "postgresql://rep@a,b/postgres",
            "postgresql://rep@db:99999/postgres",
        ] {
            assert!(check_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_password_in_the_connection_string_is_refused() {
        for c in [
            "postgresql://rep:secret@db/postgres",
            "postgres://rep:@db",
            "postgresql://db/postgres?sslmode=require&password=x",
            "host=db user=rep password=x",
            "host=db password = x",
        ] {
            assert!(conninfo_has_password(c), "{c}");
        }
        for c in [
            "postgresql://rep@db:5432/postgres",
            "postgresql://db/postgres?passfile=/x",
            "host=db user=rep passfile=/p",
            "postgresql://[::1]:5432/postgres",
        ] {
            assert!(!conninfo_has_password(c), "{c}");
        }
        let bad = |slot: &str| {
            validate(&FollowSource {
                conninfo: "postgresql://db".into(),
                password: None,
                slot: Some(slot.into()),
                ..Default::default()
            })
            .is_err()
        };
        assert!(bad("Prod") && bad("") && bad("a-b") && !bad("ramify_prod_1"));
        let mode = |mode: FollowMode, publication: Option<&str>| {
            validate(&FollowSource {
                conninfo: "postgresql://db".into(),
                mode,
                publication: publication.map(str::to_owned),
                ..Default::default()
            })
            .map_err(|e| e.to_string())
        };
        assert!(mode(FollowMode::Logical, None)
            .unwrap_err()
            .contains("needs \"follow.publication\""));
        assert!(mode(FollowMode::Physical, Some("bank"))
            .unwrap_err()
            .contains("only for mode logical"));
        assert!(mode(FollowMode::Logical, Some("Bank; DROP")).is_err());
        mode(FollowMode::Logical, Some("bank")).unwrap();
    }

    #[test]
    fn source_errors_say_what_to_change() {
        let e = source_error("pg_basebackup: error: connection to server at \"127.0.0.1\", port 5 failed: FATAL:  password authentication failed for user \"rep\"\n");
        assert!(
            matches!(&e, NodeError::Source { unreachable: false, message } if message.contains("password authentication failed") && message.contains("check the replication role's password")),
            "{e}"
        );
        let e = source_error("psql: error: connection to server at \"127.0.0.1\", port 9 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n");
        assert!(
            matches!(
                &e,
                NodeError::Source {
                    unreachable: true,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn log_diagnosis_names_the_slot_and_the_network() {
        let log = "2026-12-05 LOG:  started streaming WAL from primary at 0/3000000 on timeline 1\n\
                   2026-12-05 FATAL:  could not start WAL streaming: ERROR:  replication slot \"s1\" does not exist\n";
        let d = diagnose_log(log);
        assert!(d.contains("replication slot \"s1\" does not exist"), "{d}");
        assert!(d.contains("dropped on the source"), "{d}");
        let d = diagnose_log("x FATAL:  could not connect to the primary server: connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n");
        assert!(d.contains("retries"), "{d}");
        // The network cut mid-stream.
        let d = diagnose_log("x FATAL:  could not receive data from WAL stream: server closed the connection unexpectedly
");
        assert!(d.contains("retries"), "{d}");
    }

    #[test]
    fn an_earlier_run_of_the_compute_is_not_the_present_problem() {
        let log =
            "2026-12-07 FATAL:  terminating walreceiver process due to administrator command\n\
                   2026-12-07 LOG:  database system is shut down\n\
                   2026-12-07 LOG:  starting PostgreSQL 15.18 on x86_64-pc-linux-gnu\n\
                   2026-12-07 LOG:  listening on IPv4 address \"127.0.0.1\", port 5432\n";
        assert!(since_last_start(log).starts_with("2026-12-07 LOG:  starting PostgreSQL"));
        let d = diagnose_log(since_last_start(log));
        assert!(d.starts_with("not streaming from the source yet"), "{d}");
        // Then the present run's own error.
        let log = format!("{log}2026-12-07 FATAL:  could not start WAL streaming: ERROR:  replication slot \"s1\" does not exist\n");
        assert!(diagnose_log(since_last_start(&log)).contains("dropped on the source"));
        // A log holding no start (cut to its last 64 KiB) is read whole.
        assert_eq!(since_last_start("x FATAL:  y\n"), "x FATAL:  y\n");
    }

    #[test]
    fn a_path_holding_timelines_is_no_timeline_switch() {
        // A compute just started: its socket path holds `timelines/`, nothing is wrong.
        let log = "2026-12-07 LOG:  listening on Unix socket \"/data/timelines/970598c3/run/.s.PGSQL.33443\"\n";
        let d = diagnose_log(log);
        assert!(d.starts_with("not streaming from the source yet"), "{d}");
        let d = diagnose_log(
            "x FATAL:  highest timeline 1 of the primary is behind recovery timeline 2\n",
        );
        assert!(d.contains("switched timelines"), "{d}");
        let d = diagnose_log(
            "x LOG:  fetching timeline history file for timeline 2 from primary server\n",
        );
        assert!(d.contains("fetching timeline history"), "{d}");
    }
}
