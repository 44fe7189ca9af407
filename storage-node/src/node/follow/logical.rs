//! Logical following: for a source that allows no replication connection for a physical
//! copy (a managed service) or runs another Postgres major. The root is an ordinary
//! cluster (`initdb`, its base snapshot) into which the node loads the source's schema
//! (`pg_dump --schema-only`) and creates one subscription to the source's publication,
//! copying its tables and then applying its changes as they commit. Its compute is an
//! ordinary primary; its history is ordinary WAL, so forks of it are ordinary forks.
//!
//! What logical replication does not carry, and the follower therefore lacks: DDL after
//! the copy (a schema change on the source stops the apply until the follower's schema
//! is changed alike), sequences (a fork advances each sequence a column owns past the
//! column's largest value), large objects, and roles (its objects belong to [`OWNER`],
//! and a fork's role adopts them).
//!
//! The source's schema is untrusted SQL, loaded and applied only as [`OWNER`], a role
//! that is no superuser: see [`UntrustedSchema`] and `load_and_subscribe`.
//!
//! A fork carries the subscription in its catalog: every timeline below a logical
//! follower starts with `max_logical_replication_workers = 0` in its own
//! `postgresql.auto.conf`, so no fork ever connects to the source or takes the slot.

use ramify_api::FollowSource;
use ramify_compute::settings::append_conninfo;
use ramify_compute::{ComputeSettings, PgBin, PgUser, StopMode};

use super::super::*;
use super::*;

/// The subscription's name in the follower (one per follower).
pub const SUBSCRIPTION: &str = "ramify_follow";

/// The role that owns a logical follower's objects and its subscription: no superuser,
/// so what the source's schema defines never runs with a superuser's rights.
pub const OWNER: &str = "ramify_follower";

/// The line every timeline below a logical follower carries in `postgresql.auto.conf`.
pub(in crate::node) const NO_APPLY_WORKERS: &str =
    "# Written by ramify-storage: this timeline descends from a logical follower, whose\n\
# subscription its catalog carries. It must never connect to the source or take the\n\
# follower's slot.\n\
max_logical_replication_workers = 0\n";

/// The file in an initial copy's `run/` holding its subscription's oid.
const SUBSCRIPTION_OID_FILE: &str = "subscription.oid";

/// How long the temporary Postgres that loads the schema may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What the node learnt from the source before copying it.
#[derive(Debug)]
struct LogicalFacts {
    major: u32,
}

impl Node {
    /// A root that follows `source` logically: checks, `initdb` and the base snapshot,
    /// then with a temporary Postgres on the staging directory the source's schema, the
    /// subscription, and the initial copy of every published table.
    pub(in crate::node) async fn create_logical_follower(
        &self,
        id: TimelineId,
        req: &CreateTimeline,
        source: &FollowSource,
    ) -> Result<TimelineRecord, NodeError> {
        let (bin, initdb) = self.follow_bin()?;
        let publication = source
            .publication
            .as_deref()
            .ok_or_else(|| NodeError::Invalid("a logical follower needs \"publication\"".into()))?;
        let slot = slot_name(id, source);
        let facts = self
            .check_logical_source(&bin, source, publication, &slot)
            .await?;
        let mut rec = self.begin(id, req)?;
        let dir = TimelineDir(self.layout.creating(id));
        let user = PgUser::resolve(None).map_err(ramify_compute::ProcessError::from)?;
        write_passfile(&dir.run().join(PASSFILE), source.password.as_deref(), &user)?;
        let t0 = Instant::now();
        self.init_root(&mut rec, &dir, &initdb).await?;
        // Sockets only, in a 0700 directory of its own under the system's temporary
        // directory: the timeline's path may be longer than a socket path may be.
        let sockets = tempfile::Builder::new()
            .prefix("ramify-load-")
            .tempdir()
            .map_err(io_op("make the schema loader's socket directory"))?;
        user.chown(sockets.path())
            .map_err(ramify_compute::ProcessError::from)?;
        let settings = ComputeSettings {
            port: 5432,
            listen_addresses: String::new(),
            run_dir: sockets.path().to_path_buf(),
            archive_command: wal::archive_command(),
            parameters: Default::default(),
            standby: None,
            archive_timeout_secs: None,
        };
        let running =
            ramify_compute::process::start(&bin, &user, &dir.pgdata(), &settings, START_TIMEOUT)
                .await?;
        let mut subscription = None;
        let loaded = self
            .load_and_subscribe(
                id,
                &bin,
                source,
                publication,
                &slot,
                &settings,
                &mut subscription,
            )
            .await;
        let mode = if loaded.is_ok() {
            StopMode::Fast
        } else {
            StopMode::Immediate
        };
        let stopped = running.stop(&bin, &user, mode).await;
        self.set_copy_progress(id, None);
        if let Err(e) = &loaded {
            // The subscription may have made its slot before the copy failed: a slot
            // nobody reads would make the source keep WAL for ever.
            if let Err(d) = drop_source_slot(&bin, source, &slot, subscription).await {
                warn!(timeline = %id, error = %e, drop_error = %d, "{}", slot_left(&slot));
            }
        }
        let copied = loaded?;
        stopped?;
        let rec = self.commit(rec)?;
        info!(
            timeline = %id, source = %source.conninfo, publication, slot, source_major = facts.major,
            tables = copied, elapsed_ms = t0.elapsed().as_millis() as u64,
            "created logical following root (schema, subscription, initial copy)"
        );
        Ok(rec)
    }

    /// Loads the source's schema into the database its URI names, subscribes, and waits
    /// for every table's initial copy. Returns the number of tables copied.
    #[allow(clippy::too_many_arguments)]
    async fn load_and_subscribe(
        &self,
        id: TimelineId,
        bin: &PgBin,
        source: &FollowSource,
        publication: &str,
        slot: &str,
        settings: &ComputeSettings,
        subscription: &mut Option<u32>,
    ) -> Result<usize, NodeError> {
        let database = ramify_api::names::uri_database(&source.conninfo);
        let run = &settings.run_dir;
        let c = control::connect(run, settings.port).await?;
        // The source's schema is SQL its owner wrote (or a hostile server made up): it is
        // loaded by OWNER, a role that is no superuser, which also owns the subscription.
        // Nothing the source defines — a trigger, a default, an index expression — ever
        // runs with a superuser's rights here, where every timeline's files are.
        c.batch_execute(&format!(
            "CREATE ROLE {OWNER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        ))
        .await
        .map_err(|e| query_error("create the follower's owner role", e))?;
        c.batch_execute(&if database == "postgres" {
            format!("ALTER DATABASE postgres OWNER TO {OWNER}")
        } else {
            format!("CREATE DATABASE {} OWNER {OWNER}", quote_ident(&database))
        })
        .await
        .map_err(|e| query_error("create the source's database", e))?;
        // The schema, without owners, grants, publications or subscriptions: the source's
        // roles do not exist here.
        let pg_dump = bin
            .tool("pg_dump")
            .ok_or_else(|| NodeError::Conflict("pg_dump not found next to initdb".into()))?;
        let mut dump = tokio::process::Command::new(pg_dump);
        dump.args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--no-publications",
            "--no-subscriptions",
            "--no-tablespaces",
            "--no-security-labels",
            "--no-password",
            "-d",
        ])
        .arg(append_conninfo(
            &source.conninfo,
            &[("application_name", "ramify-schema")],
        ));
        source_env(&mut dump, source);
        let dumped = source_output(&mut dump, "pg_dump --schema-only").await?;
        let schema = UntrustedSchema::of(&dumped);
        let major = bin.major_version().unwrap_or(0);
        let db = control::connect_db(run, settings.port, &database).await?;
        // Extensions are this node's own code, which only a superuser may install: each
        // one the schema names is installed first (by name, quoted here), in a schema of
        // OWNER's; the dump's own CREATE EXTENSION IF NOT EXISTS then does nothing.
        for (extension, in_schema) in &schema.extensions {
            let mut sql = String::new();
            if in_schema != "public" {
                sql.push_str(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {OWNER}; ",
                    quote_ident(in_schema)
                ));
            }
            sql.push_str(&format!(
                "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                quote_ident(extension),
                quote_ident(in_schema)
            ));
            db.batch_execute(&sql).await.map_err(|e| NodeError::Source {
                unreachable: false,
                message: format!(
                    "the source's schema needs extension {extension:?}, which Postgres {major} here cannot install: {}",
                    db_message(&e)
                ),
            })?;
        }
        let loader = control::connect_as(run, settings.port, &database, OWNER).await?;
        loader
            .batch_execute(&schema.script)
            .await
            .map_err(|e| NodeError::Source {
                unreachable: false,
                message: format!(
                    "the source's schema does not load into Postgres {major} here: {}",
                    db_message(&e)
                ),
            })?;
        drop(loader);
        // The subscription names the password file relative to the data directory (a
        // backend's working directory), so the same catalog works wherever the
        // timeline is mounted; a fork's run directory has no such file.
        let conninfo = append_conninfo(
            &source.conninfo,
            &[
                ("passfile", &format!("../run/{PASSFILE}")),
                ("application_name", "ramify"),
                ("connect_timeout", &CONNECT_TIMEOUT_SECS.to_string()),
            ],
        );
        let log = run.join(ramify_compute::process::SERVER_LOG);
        let log_from = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        // Made disabled (no worker runs yet), handed to OWNER — Postgres 15 lets only a
        // superuser own a subscription, so OWNER is one for that moment only, in one
        // transaction — and enabled: its workers copy and apply as OWNER, whose rights
        // Postgres checks on every table, and whose triggers run as OWNER.
        db.batch_execute(&format!(
            "CREATE SUBSCRIPTION {SUBSCRIPTION} CONNECTION {} PUBLICATION {} WITH (slot_name = {}, copy_data = true, enabled = false)",
            quote_literal(&conninfo),
            quote_ident(publication),
            quote_literal(slot),
        ))
        .await
        .map_err(|e| match e.as_db_error() {
            Some(d) => source_error(d.message()),
            None => query_error("create the subscription", e),
        })?;
        let oid: u32 = db
            .query_one(
                "SELECT oid FROM pg_subscription WHERE subname = $1",
                &[&SUBSCRIPTION],
            )
            .await
            .map_err(|e| query_error("read the subscription's oid", e))?
            .get(0);
        *subscription = Some(oid);
        // For the start-up recovery of a node killed from here on: the table-sync slots
        // on the source are named after this oid.
        self.open_dir(&TimelineDir(self.layout.creating(id)).run())?
            .write(SUBSCRIPTION_OID_FILE, oid.to_string().as_bytes(), false)
            .map_err(CloneError::from)?;
        db.batch_execute(&format!(
            "BEGIN; ALTER ROLE {OWNER} SUPERUSER; ALTER SUBSCRIPTION {SUBSCRIPTION} OWNER TO {OWNER}; \
             ALTER ROLE {OWNER} NOSUPERUSER; ALTER SUBSCRIPTION {SUBSCRIPTION} ENABLE; COMMIT"
        ))
        .await
        .map_err(|e| query_error("hand the subscription to its owner", e))?;
        crate::failpoint::hit_async("logical.after_subscribe").await;
        // The copy is done when every table is ready ('r'); an apply or copy worker's
        // error (a table missing here, a constraint the data breaks) fails the create.
        let started_at = Utc::now();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let row = db
                .query_one(
                    "SELECT count(*) FILTER (WHERE srsubstate <> 'r'), count(*), pg_database_size(current_database()) \
                     FROM pg_subscription_rel",
                    &[],
                )
                .await
                .map_err(|e| query_error("read the initial copy's progress", e))?;
            let (pending, tables, bytes): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            self.set_copy_progress(
                id,
                Some(CopyProgress {
                    done_bytes: bytes.max(0) as u64,
                    started_at,
                }),
            );
            if pending == 0 {
                return Ok(tables as usize);
            }
            if let Some(error) = worker_error(&log, log_from) {
                return Err(NodeError::Source {
                    unreachable: false,
                    message: format!(
                        "the initial copy of publication {publication:?} failed: {error}"
                    ),
                });
            }
        }
    }

    /// Connects to the source as the subscription will (an ordinary connection, not a
    /// replication one): its major, `wal_level`, the role's REPLICATION attribute, the
    /// publication, and that the slot's name is free.
    async fn check_logical_source(
        &self,
        bin: &PgBin,
        source: &FollowSource,
        publication: &str,
        slot: &str,
    ) -> Result<LogicalFacts, NodeError> {
        let mut cmd = source_psql(bin, source, "ramify-check", &[])?;
        cmd.args([
            "-c",
            "SHOW server_version_num",
            "-c",
            "SHOW wal_level",
            "-c",
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            "-c",
            &format!(
                "SELECT count(*) FROM pg_publication WHERE pubname = {}",
                quote_literal(publication)
            ),
            "-c",
            &format!(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = {}",
                quote_literal(slot)
            ),
        ]);
        let stdout = source_output(&mut cmd, "psql to check the source").await?;
        let lines: Vec<&str> = stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let value = |i: usize| lines.get(i).copied().unwrap_or("");
        let refused = |message: String| NodeError::Source {
            unreachable: false,
            message,
        };
        let major = value(0).parse::<u32>().map(|v| v / 10000).map_err(|_| {
            NodeError::Conflict(format!(
                "the source answered an unreadable server_version_num {:?}",
                value(0)
            ))
        })?;
        let ours = bin
            .major_version()
            .map_err(|e| NodeError::Conflict(format!("Postgres binaries: {e}")))?;
        if major > ours {
            return Err(refused(format!(
                "the source runs Postgres {major}, newer than this node's Postgres {ours}: pg_dump {ours} cannot read its schema (use a node with Postgres {major} or newer)"
            )));
        }
        if major < 10 {
            return Err(refused(format!(
                "the source runs Postgres {major}: logical replication needs Postgres 10 or newer"
            )));
        }
        if value(1) != "logical" {
            return Err(refused(format!(
                "the source has wal_level = {}: logical following needs wal_level = logical (ALTER SYSTEM SET wal_level = logical and restart it; on RDS set rds.logical_replication = 1, on Cloud SQL cloudsql.logical_decoding = on)",
                value(1)
            )));
        }
        if value(2) != "t" {
            return Err(refused(
                "the source's role may not replicate: ALTER ROLE ... REPLICATION on the source (on RDS: GRANT rds_replication TO it)".into(),
            ));
        }
        if value(3) != "1" {
            return Err(refused(format!(
                "the source has no publication {publication:?}: CREATE PUBLICATION {publication} FOR ALL TABLES (or FOR TABLE ...) on it"
            )));
        }
        if value(4) != "0" {
            return Err(refused(format!(
                "a replication slot {slot:?} already exists on the source: a logical follower makes its own (name another slot, or drop that one if nothing uses it)"
            )));
        }
        Ok(LogicalFacts { major })
    }
}

/// The source of `rec` when it is a logical follower.
pub(in crate::node) fn logical_source(rec: &TimelineRecord) -> Option<&FollowSource> {
    rec.request
        .follow
        .as_ref()
        .filter(|f| !f.mode.is_physical())
}

/// A logical follower's slots on its source, and what dropping them takes.
pub(in crate::node) struct LeftoverSlot {
    id: TimelineId,
    source: FollowSource,
    slot: String,
    /// The subscription's oid, which names its table-sync slots (known once it exists).
    subscription: Option<u32>,
}

impl Node {
    /// Drops a deleted logical follower's slot on its source (its compute is stopped, so
    /// the slot is let go of within moments): a slot nobody reads makes the source keep
    /// its WAL for ever. A source that cannot be reached does not stop the deletion; the
    /// log then names the command to run there.
    pub(in crate::node) async fn release_source_slot(&self, rec: &TimelineRecord) {
        if let Some(source) = logical_source(rec) {
            let slots = self.slots_of(rec.id, source, &self.dir(rec.id).run());
            self.release(slots).await;
        }
    }

    /// Start-up recovery of a logical follower whose creation a crash interrupted, before
    /// its staging directory is removed: stops the temporary Postgres the copy left
    /// running (it would go on holding the slot) and keeps what its slots on the source
    /// need to be dropped for [`Node::spawn_release_leftover_slots`].
    pub(in crate::node) fn interrupted_logical_copy(&self, rec: &TimelineRecord) {
        let Some(source) = logical_source(rec) else {
            return;
        };
        let dir = TimelineDir(self.layout.creating(rec.id));
        if let Ok(pgdata) = self.open_dir(&dir.pgdata()) {
            if let Ok(pid) = super::super::delete::local_postmaster(&dir.pgdata(), &pgdata) {
                use nix::sys::signal::{kill, Signal};
                warn!(timeline = %rec.id, %pid, "stopping the schema loader an interrupted copy left running");
                // SIGQUIT: immediate shutdown, the postmaster ends its workers itself.
                let _ = kill(pid, Signal::SIGQUIT);
                for _ in 0..50 {
                    if kill(pid, None).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
        let slots = self.slots_of(rec.id, source, &dir.run());
        self.leftover_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(slots);
    }

    /// Drops, in the background, the slots interrupted logical copies left on their
    /// sources (see [`Node::interrupted_logical_copy`]).
    pub fn spawn_release_leftover_slots(self: &std::sync::Arc<Self>) {
        let leftovers = std::mem::take(
            &mut *self
                .leftover_slots
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        if leftovers.is_empty() {
            return;
        }
        let node = self.clone();
        tokio::spawn(async move {
            for slots in leftovers {
                node.release(slots).await;
            }
        });
    }

    /// What dropping the slots of logical follower `id` takes, from its `run` directory:
    /// the source's password from its file, the subscription's oid when it was written.
    fn slots_of(&self, id: TimelineId, source: &FollowSource, run: &Path) -> LeftoverSlot {
        let run = self.open_dir(run).ok();
        let read = |name: &str| {
            run.as_ref()
                .and_then(|d| d.read(name).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        LeftoverSlot {
            id,
            slot: slot_name(id, source),
            source: FollowSource {
                password: read(PASSFILE).and_then(|t| passfile_password(&t)),
                ..source.clone()
            },
            subscription: read(SUBSCRIPTION_OID_FILE).and_then(|t| t.trim().parse().ok()),
        }
    }

    /// Drops `slots` on their source; a source that cannot be reached is logged with the
    /// command to run there.
    async fn release(&self, slots: LeftoverSlot) {
        let dropped = match self.follow_bin() {
            Ok((bin, _)) => {
                drop_source_slot(&bin, &slots.source, &slots.slot, slots.subscription).await
            }
            Err(e) => Err(e),
        };
        match dropped {
            Ok(()) => {
                info!(timeline = %slots.id, slot = slots.slot, "dropped the logical follower's slots on its source")
            }
            Err(e) => warn!(timeline = %slots.id, error = %e, "{}", slot_left(&slots.slot)),
        }
    }
}

/// Drops `slot` on the source once no walsender holds it (a subscriber that just
/// stopped lets go within moments); a slot that is already gone is fine.
async fn drop_source_slot(
    bin: &PgBin,
    source: &FollowSource,
    slot: &str,
    subscription: Option<u32>,
) -> Result<(), NodeError> {
    // With the subscription's oid, also the slots its table sync workers made (Postgres
    // names them pg_<subscription>_sync_<table>_<system>), left by a copy cut short.
    let ours = match subscription {
        Some(oid) => format!(
            "(slot_name = {} OR slot_name LIKE 'pg\\_{oid}\\_sync\\_%')",
            quote_literal(slot)
        ),
        None => format!("slot_name = {}", quote_literal(slot)),
    };
    let mut last = String::new();
    for _ in 0..DROP_SLOT_TRIES {
        let mut cmd = source_psql(bin, source, "ramify-cleanup", &[])?;
        cmd.args([
                "-c",
                &format!(
                    "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots WHERE {ours} AND NOT active"
                ),
                "-c",
                &format!("SELECT count(*) FROM pg_replication_slots WHERE {ours}"),
            ]);
        let out = cmd
            .output()
            .await
            .map_err(io_op("run psql to drop the slot"))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.lines().map(str::trim).next_back() == Some("0") {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        // Unreachable or refused: no point in waiting.
        if !out.status.success() && !last.contains("is active") {
            return Err(source_error(&last));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(NodeError::Conflict(format!(
        "the slot is still in use on the source {}",
        compute_tail(&last)
    )))
}

/// What the log says when a logical follower's slot could not be dropped.
fn slot_left(slot: &str) -> String {
    format!(
        "replication slot {slot} is left on the source: drop it there (SELECT pg_drop_replication_slot('{slot}')) or it keeps WAL for a follower that is gone"
    )
}

/// The password of the follower's password file (one `*:*:*:*:password` line).
fn passfile_password(text: &str) -> Option<String> {
    let rest = text.lines().next()?.strip_prefix("*:*:*:*:")?;
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    Some(out)
}

/// How often a deleted follower's slot is tried before it is left (every 0.5 s).
const DROP_SLOT_TRIES: u32 = 20;

/// The slot the subscription makes on the source: the one asked for, or one named after
/// the timeline so that two followers of one source never share one.
pub(super) fn slot_name(id: TimelineId, source: &FollowSource) -> String {
    source
        .slot
        .clone()
        .unwrap_or_else(|| format!("ramify_{}", id.simple()))
}

/// The first error a logical replication worker logged since `from`, if any.
fn worker_error(log: &Path, from: u64) -> Option<String> {
    let text = std::fs::read(log).ok()?;
    let new = String::from_utf8_lossy(text.get(from as usize..)?).into_owned();
    new.lines()
        .find(|l| l.contains("ERROR:"))
        .map(|l| l.split("ERROR:").nth(1).unwrap_or(l).trim().to_owned())
}

/// Why a logical follower is not applying, from the last error in its compute's log,
/// with what to do about it.
pub(super) fn diagnose_log(log: &str) -> String {
    let Some(error) = log
        .lines()
        .rev()
        .find(|l| l.contains("ERROR:") || l.contains("FATAL:"))
        .map(|l| {
            l.split_once("ERROR:")
                .or_else(|| l.split_once("FATAL:"))
                .map_or(l, |(_, m)| m)
                .trim()
        })
    else {
        return "the subscription's worker is not running and logged no error yet: it retries every few seconds".into();
    };
    let hint = if error.contains("password authentication failed")
        || error.contains("no password supplied")
    {
        "the source refused the password: recreate the follower with the right one"
    } else if error.contains("does not exist") && error.contains("replication slot") {
        "the slot was dropped on the source: recreate the follower (a new initial copy)"
    } else if error.contains("logical replication target relation")
        || error.contains("missing replicated column")
        || error.contains("is missing some replicated columns")
    {
        "the source's schema changed (DDL is not replicated): recreate the follower to copy the new schema"
    } else if error.contains("could not connect") || error.contains("could not receive") {
        "the source is unreachable: the worker reconnects by itself once it answers"
    } else {
        "the worker retries every few seconds"
    };
    format!("{error} — {hint}")
}

/// A schema dump as it may be loaded by [`OWNER`]: `pg_dump`'s `\restrict` lines (psql
/// commands; the script goes to the server as SQL, never through psql) and its comments
/// on extensions (their owner is the superuser who installs them) left out, each
/// `CREATE SCHEMA` made idempotent (an extension's schema is made first), and the
/// extensions it names, to install beforehand.
#[derive(Debug, PartialEq)]
struct UntrustedSchema {
    script: String,
    /// (extension, schema), as names (unquoted).
    extensions: Vec<(String, String)>,
}

impl UntrustedSchema {
    fn of(dump: &str) -> UntrustedSchema {
        let mut script = String::with_capacity(dump.len());
        let mut extensions = Vec::new();
        for line in dump.lines() {
            if line.starts_with("\\restrict ")
                || line.starts_with("\\unrestrict ")
                || line.starts_with("COMMENT ON EXTENSION ")
            {
                continue;
            }
            if let Some(e) = extension_line(line) {
                extensions.push(e);
            }
            match line.strip_prefix("CREATE SCHEMA ") {
                Some(rest) if !rest.starts_with("IF NOT EXISTS ") => {
                    script.push_str("CREATE SCHEMA IF NOT EXISTS ");
                    script.push_str(rest);
                }
                _ => script.push_str(line),
            }
            script.push('\n');
        }
        UntrustedSchema { script, extensions }
    }
}

/// `CREATE EXTENSION IF NOT EXISTS e WITH SCHEMA s;` exactly as `pg_dump` writes it, as
/// the two names; anything else is no extension line (and loads, or fails, as OWNER).
fn extension_line(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix("CREATE EXTENSION IF NOT EXISTS ")?;
    let (extension, rest) = identifier(rest)?;
    let rest = rest.strip_prefix(" WITH SCHEMA ")?;
    let (schema, rest) = identifier(rest)?;
    (rest == ";").then_some((extension, schema))
}

/// An SQL identifier at the start of `s` as `pg_dump` writes one (bare, or in double
/// quotes with `""` for a quote): the name, and what follows it.
fn identifier(s: &str) -> Option<(String, &str)> {
    if let Some(quoted) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut rest = quoted;
        loop {
            let end = rest.find('"')?;
            name.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            match rest.strip_prefix('"') {
                Some(after) => {
                    name.push('"');
                    rest = after;
                }
                None => return (!name.is_empty()).then_some((name, rest)),
            }
        }
    }
    let end = s
        .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    (end > 0 && !s.starts_with(|c: char| c.is_ascii_digit() || c == '$'))
        .then(|| (s[..end].to_owned(), &s[end..]))
}

/// A server's message, or the client's error.
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

fn query_error(what: &str, e: tokio_postgres::Error) -> NodeError {
    NodeError::Io {
        op: what.to_owned(),
        source: io::Error::other(match e.as_db_error() {
            Some(d) => d.message().to_owned(),
            None => e.to_string(),
        }),
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_is_the_one_asked_for_or_the_timelines_own() {
        let id: TimelineId = "0b9a1c54-3f43-4e0a-9d57-8f0d2f5a8e11".parse().unwrap();
        let mut s = FollowSource::default();
        assert_eq!(slot_name(id, &s), "ramify_0b9a1c543f434e0a9d578f0d2f5a8e11");
        assert!(slot_name(id, &s).len() <= 63);
        s.slot = Some("prod_copy".into());
        assert_eq!(slot_name(id, &s), "prod_copy");
    }

    #[test]
    fn an_untrusted_schema_loses_psql_commands_and_names_its_extensions() {
        let dump = "\\restrict AbC123\n\
SET statement_timeout = 0;\n\
CREATE SCHEMA app;\n\
CREATE SCHEMA IF NOT EXISTS other;\n\
CREATE EXTENSION IF NOT EXISTS amcheck WITH SCHEMA public;\n\
COMMENT ON EXTENSION amcheck IS 'functions for verifying relation integrity';\n\
CREATE EXTENSION IF NOT EXISTS \"my\"\"ext\" WITH SCHEMA app;\n\
CREATE EXTENSION IF NOT EXISTS x WITH SCHEMA public; COPY t TO PROGRAM 'id';\n\
CREATE TABLE app.t (id int);\n\
\\unrestrict AbC123\n";
        let s = UntrustedSchema::of(dump);
        assert_eq!(
            s.extensions,
            vec![
                ("amcheck".to_owned(), "public".to_owned()),
                ("my\"ext".to_owned(), "app".to_owned()),
            ],
            "a line with more after the extension is no extension line"
        );
        assert!(!s.script.contains("restrict"), "{}", s.script);
        assert!(!s.script.contains("COMMENT ON EXTENSION"), "{}", s.script);
        assert!(s.script.contains("CREATE SCHEMA IF NOT EXISTS app;\n"));
        assert!(s.script.contains("CREATE SCHEMA IF NOT EXISTS other;\n"));
        // What the owner role runs, and may fail to, stays in the script.
        assert!(s.script.contains("COPY t TO PROGRAM 'id';"));
        assert_eq!(identifier("\"\" x"), None);
        assert_eq!(identifier("1abc"), None);
        assert_eq!(
            identifier("ab_c1 rest"),
            Some(("ab_c1".to_owned(), " rest"))
        );
    }

    #[test]
    fn the_password_file_reads_back_what_was_written() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join(PASSFILE);
        let user = PgUser::resolve(None).unwrap();
        write_passfile(&path, Some(r"a:b\c"), &user).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(passfile_password(&text).as_deref(), Some(r"a:b\c"));
        assert_eq!(passfile_password(""), None);
    }

    #[test]
    fn a_workers_error_is_found_after_the_offset_only() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("postgres.log");
        std::fs::write(&log, "old ERROR:  before\n").unwrap();
        let from = std::fs::metadata(&log).unwrap().len();
        assert_eq!(worker_error(&log, from), None);
        std::fs::write(
            &log,
            "old ERROR:  before\n2026 [7] ERROR:  relation \"public.t\" does not exist\n",
        )
        .unwrap();
        assert_eq!(
            worker_error(&log, from).as_deref(),
            Some("relation \"public.t\" does not exist")
        );
    }
}
