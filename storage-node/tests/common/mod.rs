//! Fixture shared by the storage node's integration tests: a reflink scratch filesystem,
//! a `ramify-storage` process on it, and Postgres computes on its timelines.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ramify_api::{At, CreateTimeline, Lsn, StorageClient, TimelineId, TimelineInfo, TimelineState};
use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch, StorageNodeProcess};

pub struct Env {
    pub node: StorageNodeProcess,
    pub client: StorageClient,
    pub pg: PgBin,
    pub user: PgUser,
    // Dropped last: unmounting needs every process above stopped.
    pub scratch: Scratch,
}

impl Env {
    /// A node on a fresh scratch filesystem of `size` bytes (reflink where possible).
    pub async fn new(size: u64, extra_args: &[&str]) -> Env {
        let scratch = Scratch::reflink(size).expect("scratch filesystem");
        let pg = PgBin::find(None).expect("Postgres binaries");
        let user = PgUser::resolve(None).expect("Postgres OS user");
        let mut args = vec!["--pg-bin", pg.dir().to_str().unwrap()];
        args.extend_from_slice(extra_args);
        let node = StorageNodeProcess::start(
            std::path::Path::new(env!("CARGO_BIN_EXE_ramify-storage")),
            &scratch.path().join("data"),
            &args,
        )
        .await
        .expect("storage node");
        let client = node.client();
        Env {
            node,
            client,
            pg,
            user,
            scratch,
        }
    }

    /// [`Env::new`] with extra environment for the node process (e.g. `RAMIFY_FAILPOINTS`).
    pub async fn new_with_env(size: u64, extra_args: &[&str], envs: &[(&str, &str)]) -> Env {
        let scratch = Scratch::reflink(size).expect("scratch filesystem");
        let pg = PgBin::find(None).expect("Postgres binaries");
        let user = PgUser::resolve(None).expect("Postgres OS user");
        let mut args = vec!["--pg-bin", pg.dir().to_str().unwrap()];
        args.extend_from_slice(extra_args);
        let node = StorageNodeProcess::start_with_env(
            std::path::Path::new(env!("CARGO_BIN_EXE_ramify-storage")),
            &scratch.path().join("data"),
            &args,
            envs,
        )
        .await
        .expect("storage node");
        let client = node.client();
        Env {
            node,
            client,
            pg,
            user,
            scratch,
        }
    }

    pub fn reflink(&self) -> bool {
        self.scratch.is_reflink()
    }

    /// Creates a root timeline (a new cluster, made by the node's initdb) and starts its
    /// first compute.
    pub async fn root(&self) -> (TimelineInfo, Compute) {
        let tl = self
            .client
            .create_timeline(&CreateTimeline::default())
            .await
            .expect("create root")
            .value;
        assert_eq!(tl.state, TimelineState::Ready);
        let c = self.start(&tl).await;
        (tl, c)
    }

    /// A root with pgbench scale 1 and a snapshot `s1` of it: the root, its compute and
    /// the checksum of `pgbench_accounts` every fork at `s1` must have.
    pub async fn pgbench_root_with_s1(&self) -> (TimelineInfo, Compute, String) {
        let (root, rc) = self.root().await;
        rc.pgbench(&["-i", "-s", "1", "-q", "postgres"])
            .await
            .expect("pgbench -i");
        let expected = table_checksum(&rc, "pgbench_accounts").await;
        self.client.create_snapshot(root.id, "s1").await.unwrap();
        (root, rc, expected)
    }

    /// Starts a compute on a timeline (initdb for an empty root of an older release).
    pub async fn start(&self, tl: &TimelineInfo) -> Compute {
        self.start_with(tl, &[]).await
    }

    /// [`Env::start`] with extra Postgres settings.
    pub async fn start_with(&self, tl: &TimelineInfo, params: &[(&str, &str)]) -> Compute {
        if let Some(f) = tl.follow.as_ref().filter(|f| f.mode.is_physical()) {
            // A physical following root: a hot standby of its source, as the runtimes
            // start it.
            let run_dir = Path::new(&tl.run_dir);
            let settings = ramify_compute::ComputeSettings {
                port: ramify_testkit::free_port(),
                listen_addresses: "127.0.0.1".into(),
                run_dir: run_dir.to_path_buf(),
                archive_command: tl.archive_command.clone(),
                parameters: params
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                standby: Some(ramify_compute::Standby {
                    conninfo: f.conninfo.clone(),
                    passfile: run_dir.join(&f.passfile),
                    slot: f.slot.clone(),
                }),
                archive_timeout_secs: None,
            };
            return Compute::start_settings(&self.pg, &self.user, Path::new(&tl.pgdata), settings)
                .await
                .unwrap_or_else(|e| panic!("follower {} failed to start: {e}", tl.id));
        }
        Compute::start(
            &self.pg,
            &self.user,
            std::path::Path::new(&tl.pgdata),
            std::path::Path::new(&tl.run_dir),
            &tl.archive_command,
            tl.state == TimelineState::Empty,
            params,
        )
        .await
        .unwrap_or_else(|e| panic!("compute on {} failed to start: {e}", tl.id))
    }

    pub async fn fork(&self, parent: TimelineId, at: At) -> TimelineInfo {
        self.client
            .create_timeline(&CreateTimeline {
                id: None,
                parent: Some(parent),
                at: Some(at),
                follow: None,
                backup: None,
                from_backup: None,
            })
            .await
            .unwrap_or_else(|e| panic!("fork failed: {e}\nnode log:\n{}", self.node.log_tail()))
            .value
    }

    /// The timeline with space figures measured after this call (`?sizes=fresh`).
    pub async fn get(&self, id: TimelineId) -> TimelineInfo {
        self.client
            .get_timeline_fresh(id)
            .await
            .expect("get timeline")
    }

    /// Deletes timelines in order (computes stopped first: without `force` a running
    /// one is refused); fails the test with the node's log on an error.
    pub async fn delete_all(&self, ids: &[TimelineId], force: bool) {
        for id in ids {
            self.client
                .delete_timeline(*id, force)
                .await
                .unwrap_or_else(|e| {
                    panic!("delete {id}: {e}\nnode log:\n{}", self.node.log_tail())
                });
        }
    }

    /// The names of a timeline's snapshots, as the API lists them.
    pub async fn snapshot_names(&self, id: TimelineId) -> Vec<String> {
        self.client
            .list_snapshots(id)
            .await
            .expect("list snapshots")
            .into_iter()
            .map(|s| s.name)
            .collect()
    }
}

/// The current WAL insert position of a compute.
pub async fn current_lsn(c: &Compute) -> Lsn {
    let client = c.client().await.expect("connect");
    let s: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    s.parse().expect("lsn")
}

/// An order-independent checksum of every row of a table.
pub async fn table_checksum(c: &Compute, table: &str) -> String {
    let client = c.client().await.expect("connect");
    client
        .query_one(
            &format!("SELECT coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '') FROM {table} t"),
            &[],
        )
        .await
        .expect("checksum")
        .get(0)
}

pub async fn count(c: &Compute, table: &str) -> i64 {
    c.query_i64(&format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
}

pub async fn table_exists(c: &Compute, table: &str) -> bool {
    c.query_i64(&format!(
        "SELECT count(*) FROM pg_class WHERE relname = '{table}'"
    ))
    .await
    .expect("pg_class")
        == 1
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Runs a query returning one text value.
pub async fn query_text(c: &Compute, sql: &str) -> String {
    c.client()
        .await
        .expect("connect")
        .query_one(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Waits (up to 30 s) until the node has moved everything the compute archived out of
/// the timeline's `archive-inbox/` into `wal/`: disk usage and accounting measured while a
/// segment is half-way through that move disagree.
pub async fn archive_drained(tl: &TimelineInfo) {
    let inbox = Path::new(&tl.pgdata)
        .parent()
        .expect("pgdata has a parent")
        .join("archive-inbox");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = fs::read_dir(&inbox)
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.path().is_file() && !e.file_name().to_string_lossy().ends_with(".tmp")
                })
            })
            .unwrap_or(false);
        if !pending || std::time::Instant::now() > deadline {
            // One more moment for a move that had already taken its file.
            tokio::time::sleep(Duration::from_millis(300)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry below `dir`: its kind and, for files, a hash of the content. The node
/// drains a timeline's archive inbox into `wal/` in the background, so this waits (up to
/// 30 s) until the inbox holds nothing but temporary files, and walks again if an entry
/// moved while it was being read.
pub fn tree_sums(dir: &Path) -> BTreeMap<PathBuf, String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = fs::read_dir(dir.join("archive-inbox"))
            .map(|rd| {
                rd.flatten().any(|e| {
                    e.path().is_file() && !e.file_name().to_string_lossy().ends_with(".tmp")
                })
            })
            .unwrap_or(false);
        if !pending || std::time::Instant::now() > deadline {
            let mut out = BTreeMap::new();
            match walk(dir, dir, &mut out) {
                Ok(()) => return out,
                // Moved or removed while walking: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("walking {}: {e}", dir.display()),
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)?.flatten() {
        let p = e.path();
        let m = fs::symlink_metadata(&p)?;
        let mut rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
        // What the compute archived counts as the archive's wherever it is now: the node
        // moves arrivals from the inbox into wal/ at any moment.
        if let Ok(name) = rel.strip_prefix("archive-inbox") {
            if m.is_file() {
                rel = Path::new("wal").join(name);
            }
        }
        if m.is_dir() {
            out.insert(rel, "dir".into());
            walk(root, &p, out)?;
        } else if m.file_type().is_symlink() {
            out.insert(rel, format!("link {:?}", fs::read_link(&p)?));
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            fs::read(&p)?.hash(&mut h);
            out.insert(rel, format!("{:x} {}", h.finish(), m.len()));
        }
    }
    Ok(())
}

/// `pg_amcheck --all --heapallindexed` (heap and btree, every database; installs the
/// `amcheck` extension first) on a compute; panics with the report and the server log's
/// end when anything is corrupt.
pub async fn amcheck(c: &Compute) {
    if let Err(e) = c.pg_amcheck().await {
        panic!(
            "pg_amcheck on {} found corruption or failed: {e}\nserver log:\n{}",
            c.pgdata().display(),
            c.log_tail()
        );
    }
}
