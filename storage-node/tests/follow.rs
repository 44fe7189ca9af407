//! Following roots: a "production" Postgres started here on a loopback port, a bank
//! workload on it, a root that follows it as a hot standby, and forks of that root at
//! latest, at an LSN and at a time taken under load; then the faults a follower meets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use ramify_api::{At, CreateTimeline, FollowMode, FollowSource, Lsn, TimelineInfo};
use ramify_compute::PgBin;
use ramify_testkit::Compute;
use tokio::sync::Mutex;

const ACCOUNTS: i64 = 100;
const OPENING: i64 = 1000;
const PASSWORD: &str = "follow-me-Secret-42";

/// The test's production database: its own cluster on a loopback port, with a
/// replication role and the bank tables.
struct Production {
    pg: Compute,
}

impl Production {
    async fn start(env: &Env) -> Production {
        Production::start_with(env, "prod", false).await
    }

    /// A production database named `name`; at `wal_level = logical` when asked (set with
    /// ALTER SYSTEM, which wins over the settings Ramify's compute writes, and a restart).
    async fn start_with(env: &Env, name: &str, logical: bool) -> Production {
        Production::start_on(env, &env.pg, name, logical).await
    }

    /// [`Production::start_with`] on the Postgres binaries `bin` (another major).
    async fn start_on(env: &Env, bin: &PgBin, name: &str, logical: bool) -> Production {
        let dir = env.scratch.path().join(name);
        std::fs::create_dir(&dir).expect("production's directory");
        env.user.chown(&dir).expect("chown production's directory");
        let pgdata = dir.join("pgdata");
        ramify_compute::process::initdb(bin, &env.user, &pgdata)
            .await
            .expect("initdb production");
        if bin.dir() != env.pg.dir() {
            // Other majors come as builds without lz4 (and 14 knows only on and off);
            // auto.conf is read last.
            std::fs::write(
                pgdata.join("postgresql.auto.conf"),
                "wal_compression = on\n",
            )
            .unwrap();
        }
        let pg = Compute::start(
            bin,
            &env.user,
            &pgdata,
            &dir.join("run"),
            "/bin/true",
            false,
            &[],
        )
        .await
        .expect("production Postgres");
        let mut pg = pg;
        if logical {
            pg.execute("ALTER SYSTEM SET wal_level = logical")
                .await
                .unwrap();
            pg.restart()
                .await
                .expect("production at wal_level = logical");
        }
        pg.execute(&format!(
            "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{PASSWORD}'; \
             CREATE EXTENSION amcheck; \
             CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL); \
             INSERT INTO accounts SELECT g, {OPENING} FROM generate_series(1, {ACCOUNTS}) g; \
             CREATE TABLE ledger (id bigserial PRIMARY KEY, src int NOT NULL, dst int NOT NULL, \
                                  amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ))
        .await
        .expect("bank tables");
        // pg_amcheck installs amcheck in every database it checks; a read-only follower
        // cannot, so production has it everywhere already.
        pg.client_db("template1")
            .await
            .unwrap()
            .batch_execute("CREATE EXTENSION amcheck")
            .await
            .expect("amcheck in template1");
        Production { pg }
    }

    fn conninfo(&self) -> String {
        format!(
            "postgresql://replicator@127.0.0.1:{}/postgres",
            self.pg.port()
        )
    }

    fn source(&self, slot: Option<&str>) -> FollowSource {
        FollowSource {
            conninfo: self.conninfo(),
            password: Some(PASSWORD.into()),
            slot: slot.map(str::to_owned),
            ..Default::default()
        }
    }

    /// Publication `bank` of the bank's tables, readable by the replication role.
    async fn publish_bank(&self) {
        self.pg
            .execute(
                "CREATE PUBLICATION bank FOR TABLE accounts, ledger; \
                 GRANT SELECT ON accounts, ledger TO replicator",
            )
            .await
            .expect("publish the bank");
    }

    /// A source for a logical follower subscribing to `publication`.
    fn logical(&self, publication: &str) -> FollowSource {
        FollowSource {
            mode: FollowMode::Logical,
            publication: Some(publication.into()),
            ..self.source(None)
        }
    }

    async fn lsn(&self) -> Lsn {
        current_lsn(&self.pg).await
    }

    /// Objects a follower must never add to the source (the slot it was asked for is
    /// counted apart).
    async fn catalog_counts(&self) -> (i64, i64, i64) {
        (
            self.pg
                .query_i64("SELECT count(*) FROM pg_roles")
                .await
                .unwrap(),
            self.pg
                .query_i64("SELECT count(*) FROM pg_database")
                .await
                .unwrap(),
            self.pg
                .query_i64(
                    "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                )
                .await
                .unwrap(),
        )
    }
}

/// Bank transfers in a loop, each one transaction moving money between two accounts
/// and writing its ledger row. Holding `gate` pauses it between transactions.
struct Workload {
    gate: Arc<Mutex<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Workload {
    async fn start(prod: &Production) -> Workload {
        let client = prod.pg.client().await.expect("connect to production");
        let gate = Arc::new(Mutex::new(()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, s) = (gate.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _open = g.lock().await;
                let src = (n * 7919 % ACCOUNTS as u64) as i64 + 1;
                let dst = (n * 104_729 % ACCOUNTS as u64) as i64 + 1;
                let amount = (n % 50) as i64 + 1;
                client
                    .batch_execute(&format!(
                        "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {src}; \
                         UPDATE accounts SET balance = balance + {amount} WHERE id = {dst}; \
                         INSERT INTO ledger (src, dst, amount) VALUES ({src}, {dst}, {amount}); COMMIT"
                    ))
                    .await
                    .expect("transfer");
                n += 1;
            }
            n
        });
        Workload { gate, stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.expect("workload")
    }
}

/// The bank's invariants on a copy, and its ledger's length.
async fn check_bank(c: &Compute, what: &str) -> i64 {
    let total = c
        .query_i64("SELECT sum(balance)::bigint FROM accounts")
        .await
        .unwrap();
    assert_eq!(total, ACCOUNTS * OPENING, "{what}: total balance changed");
    let wrong = c
        .query_i64(&format!(
            "SELECT count(*) FROM accounts a WHERE a.balance <> {OPENING} \
             + coalesce((SELECT sum(amount) FROM ledger WHERE dst = a.id), 0) \
             - coalesce((SELECT sum(amount) FROM ledger WHERE src = a.id), 0)"
        ))
        .await
        .unwrap();
    assert_eq!(wrong, 0, "{what}: balances disagree with the ledger");
    // pg_amcheck's CREATE EXTENSION IF NOT EXISTS is refused on a read-only standby; the
    // forks, where every page the follower replayed is checked, are what it is for.
    if query_text(c, "SELECT pg_is_in_recovery()::text").await == "false" {
        amcheck(c).await;
    }
    count(c, "ledger").await
}

/// Waits until the follower has replayed `lsn`.
async fn replayed(env: &Env, tl: &TimelineInfo, lsn: Lsn) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = follow_status(env, tl).await;
        if status
            .as_ref()
            .and_then(|s| s.replayed_lsn)
            .is_some_and(|r| r >= lsn)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower did not replay {lsn} within 60 s: {status:?}\n{}",
            env.node.log_tail()
        );
        sleep_ms(100).await;
    }
}

/// The node's refusal of a follower of `source` (panics if it is made).
async fn refused(env: &Env, source: FollowSource) -> ramify_api::ClientError {
    env.client
        .create_timeline(&CreateTimeline {
            follow: Some(source),
            ..Default::default()
        })
        .await
        .expect_err("refused")
}

async fn follower(env: &Env, prod: &Production, slot: Option<&str>) -> (TimelineInfo, Compute) {
    follower_of(env, prod.source(slot)).await
}

/// Once the follower has replayed what production wrote a moment after the target, a
/// fork at it: its ledger length, after checking the bank's invariants on it.
async fn fork_when_replayed(env: &Env, prod: &Production, tl: &TimelineInfo, at: At) -> i64 {
    sleep_ms(300).await;
    replayed(env, tl, prod.lsn().await).await;
    let what = format!("fork at {at}");
    let (_, c) = start_fork(env, tl, at).await;
    check_bank(&c, &what).await
}

async fn start_fork(env: &Env, parent: &TimelineInfo, at: At) -> (TimelineInfo, Compute) {
    let tl = env.fork(parent.id, at).await;
    let c = env.start(&tl).await;
    (tl, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forks_of_a_follower_under_load_hold_the_banks_invariants() {
    let env = Env::new(4 << 30, &[]).await;
    let prod = Production::start(&env).await;
    let before = prod.catalog_counts().await;
    let work = Workload::start(&prod).await;
    sleep_ms(500).await;

    let (tl, fc) = follower(&env, &prod, Some("ramify_follow")).await;
    let f = tl.follow.clone().expect("follow info");
    assert_eq!(f.conninfo, prod.conninfo());
    assert!(
        !serde_json::to_string(&tl).unwrap().contains(PASSWORD),
        "the password must never be shown"
    );
    assert_eq!(env.snapshot_names(tl.id).await, vec!["base".to_string()]);
    replayed(&env, &tl, prod.lsn().await).await;
    let status = follow_status(&env, &tl).await.expect("replication state");
    assert!(status.streaming, "{status:?}");
    assert!(
        status.lag_bytes.is_some()
            && status.lag_seconds.is_some()
            && status.last_received_at.is_some(),
        "{status:?}"
    );
    // The same figures on /metrics, for alerting on a follower falling behind.
    let metrics = reqwest::get(format!("{}/metrics", env.node.metrics_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let labels = format!("{{timeline=\"{}\",mode=\"physical\"}}", tl.id);
    for figure in [
        "streaming",
        "lag_bytes",
        "lag_seconds",
        "last_received_timestamp_seconds",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&format!("ramify_storage_follower_{figure}{labels} ")))
            .unwrap_or_else(|| panic!("no follower {figure} on /metrics:\n{metrics}"));
        if figure == "streaming" {
            assert!(line.ends_with(" 1"), "{line}");
        }
    }
    let refused = fc
        .execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)")
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("read-only transaction")),
        "a follower must refuse writes: {refused:?}"
    );

    // At latest, with transfers committing all the while: first from the follower's
    // warm standby, which the node promoted and shut down for it, so the fork's first
    // start replays nothing.
    warm_standby_ready(&env, &tl).await;
    let floor = count(&prod.pg, "ledger").await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (latest, lc) = start_warm_fork(
        &env,
        &tl,
        "a fork at latest of a follower whose warm standby is ready",
    )
    .await;
    let log = lc.log();
    assert!(
        !log.contains("redo starts") && !log.contains("selected new timeline ID"),
        "a fork from the warm standby must start without any recovery:\n{log}"
    );
    let n = check_bank(&lc, "fork at latest (warm standby)").await;
    assert!(
        n >= floor,
        "fork at latest has {n} transfers, fewer than the {floor} committed before it"
    );
    lc.execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)")
        .await
        .expect("a fork of a follower is writable");
    // The fork's point is on the follower's history, and its own history starts there.
    let lt = env.client.get_timeline(latest.id).await.unwrap();
    let now = prod.lsn().await;
    assert!(lt.fork_lsn.is_some_and(|l| l <= now), "{lt:?}");

    // At once again: the warm standby is being rebuilt, so this one replays the WAL the
    // follower gave it and promotes fast (no end-of-recovery checkpoint) — unless the
    // new warm standby caught up already, which the node's log tells.
    let floor = count(&prod.pg, "ledger").await;
    replayed(&env, &tl, prod.lsn().await).await;
    let served = env.node.log().matches(WARM_SERVED).count();
    let (_, mut lc2) = start_fork(&env, &tl, At::Latest).await;
    let log = lc2.log();
    if env.node.log().matches(WARM_SERVED).count() == served {
        assert!(
            log.contains("selected new timeline ID") && !log.contains("end-of-recovery"),
            "a fork of a follower at latest must promote without an end-of-recovery checkpoint:\n{log}"
        );
    }
    let again = check_bank(&lc2, "second fork at latest").await;
    assert!(again >= floor, "{again} < {floor}");
    lc2.stop().await.unwrap();

    // At an LSN: the exact prefix committed before it.
    let (lsn, at_lsn) = {
        let _paused = work.gate.lock().await;
        (prod.lsn().await, count(&prod.pg, "ledger").await)
    };
    assert_eq!(
        fork_when_replayed(&env, &prod, &tl, At::Lsn(lsn)).await,
        at_lsn,
        "fork at {lsn}"
    );

    // At a time: every transfer committed at or before it, none after.
    let (t, at_time) = {
        let _paused = work.gate.lock().await;
        sleep_ms(30).await;
        let t = Utc::now();
        sleep_ms(30).await;
        (t, count(&prod.pg, "ledger").await)
    };
    assert_eq!(
        fork_when_replayed(&env, &prod, &tl, At::Time(t)).await,
        at_time,
        "fork at {t}"
    );

    let transfers = work.finish().await;
    assert!(transfers > 100, "the workload ran ({transfers} transfers)");
    // The follower kept up through the forks and holds the invariants itself.
    replayed(&env, &tl, prod.lsn().await).await;
    assert_eq!(
        check_bank(&fc, "the follower").await,
        count(&prod.pg, "ledger").await
    );
    // A fork of a fork is an ordinary branch.
    let (_, gc) = start_fork(&env, &latest, At::Latest).await;
    assert_eq!(check_bank(&gc, "a fork of the fork").await, n + 1);

    // Production was never written to: no role, database or table of Ramify's, and only
    // the slot it was asked to make.
    assert_eq!(prod.catalog_counts().await, before);
    assert_eq!(
        query_text(
            &prod.pg,
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"
        )
        .await,
        "ramify_follow"
    );
}

/// The pid in a warm standby's `postmaster.pid`, if it has one.
fn warm_pid(env: &Env, tl: &TimelineInfo) -> Option<i32> {
    let pidfile = env
        .scratch
        .path()
        .join(format!("data/warm/{}/pgdata/postmaster.pid", tl.id));
    std::fs::read_to_string(pidfile)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_standby_dies_with_its_node_and_is_rebuilt_after_a_restart() {
    let mut env = Env::new(1 << 30, &[]).await;
    let prod = Production::start(&env).await;
    let (tl, mut fc) = follower(&env, &prod, None).await;
    warm_standby_ready(&env, &tl).await;
    let pid = warm_pid(&env, &tl).expect("the warm standby's postmaster.pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    // A SIGKILL of the node leaves no Postgres of its own running.
    env.node.kill9().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the warm standby {pid} outlived its node by 10 s"
        );
        sleep_ms(100).await;
    }
    env.node.restart().await.unwrap();
    warm_standby_ready(&env, &tl).await;
    assert_ne!(warm_pid(&env, &tl), Some(pid));
    let (_, mut c) = start_warm_fork(&env, &tl, "a fork after the node's restart").await;
    check_bank(&c, "fork after the node's restart").await;
    c.stop().await.unwrap();
    fc.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_refuses_or_cannot_be_reached_is_named() {
    let env = Env::new(1 << 30, &[]).await;
    let prod = Production::start(&env).await;
    let create = |source: FollowSource| refused(&env, source);
    let e = create(FollowSource {
        password: Some("wrong".into()),
        ..prod.source(None)
    })
    .await;
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(
        e.to_string().contains("password authentication failed")
            && e.to_string()
                .contains("check the replication role's password"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("wrong"),
        "the password is not echoed: {e}"
    );

    let e = create(FollowSource {
        conninfo: format!(
            "postgresql://replicator@127.0.0.1:{}/postgres",
            ramify_testkit::free_port()
        ),
        ..prod.source(None)
    })
    .await;
    assert_eq!(e.code(), Some("source_unreachable"), "{e}");
    assert_eq!(e.status().map(|s| s.as_u16()), Some(502), "{e}");

    // A role without REPLICATION.
    prod.pg
        .execute(&format!("CREATE ROLE reader LOGIN PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    let e = create(FollowSource {
        conninfo: format!("postgresql://reader@127.0.0.1:{}/postgres", prod.pg.port()),
        ..prod.source(None)
    })
    .await;
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(e.to_string().contains("REPLICATION"), "{e}");

    let e = create(FollowSource {
        conninfo: format!(
            "postgresql://replicator:{PASSWORD}@127.0.0.1:{}/postgres",
            prod.pg.port()
        ),
        password: None,
        slot: None,
        ..Default::default()
    })
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");

    // An attacker's "source" that is another timeline's compute, reached through its
    // socket directory (where the bootstrap superuser is trusted), or a file of the node.
    let (victim, _vc) = env.root().await;
    let run = victim.run_dir.replace('/', "%2F");
    for conninfo in [
        format!("postgresql://postgres@{run}/postgres"),
        format!(
            "postgresql://postgres@127.0.0.1/postgres?host={}",
            victim.run_dir
        ),
        format!(
            "postgresql://replicator@127.0.0.1:{}/postgres?passfile=/etc/passwd",
            prod.pg.port()
        ),
    ] {
        let e = create(FollowSource {
            conninfo: conninfo.clone(),
            password: None,
            slot: None,
            ..Default::default()
        })
        .await;
        assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{conninfo}: {e}");
    }
    env.client.delete_timeline(victim.id, true).await.unwrap();

    // Nothing half-made is left behind, and the source got no slot.
    assert!(env.client.list_timelines().await.unwrap().is_empty());
    assert_eq!(
        prod.pg
            .query_i64("SELECT count(*) FROM pg_replication_slots")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_rides_out_a_source_restart_and_names_a_dropped_slot() {
    let env = Env::new(2 << 30, &[]).await;
    let mut prod = Production::start(&env).await;
    let (tl, mut fc) = follower(&env, &prod, Some("ramify_s1")).await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (_, early) = start_fork(&env, &tl, At::Latest).await;
    let early_rows = check_bank(&early, "a fork before the faults").await;

    // The source restarts: the follower says why it is not streaming, then catches up
    // by itself.
    prod.pg.stop().await.unwrap();
    let problem = eventually_problem(&env, &tl).await;
    assert!(problem.contains("retries"), "{problem}");
    prod.pg.restart().await.unwrap();
    prod.pg
        .execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)")
        .await
        .unwrap();
    replayed(&env, &tl, prod.lsn().await).await;
    assert_eq!(count(&fc, "ledger").await, 1);

    // The slot is dropped while the follower is stopped: it names the slot and what to do.
    fc.stop().await.unwrap();
    prod.pg
        .execute("SELECT pg_drop_replication_slot('ramify_s1')")
        .await
        .unwrap();
    let mut fc = env.start(&tl).await;
    let problem = eventually_problem(&env, &tl).await;
    assert!(
        problem.contains("\"ramify_s1\" does not exist")
            && problem.contains("dropped on the source"),
        "{problem}"
    );
    // The fork taken before is untouched by either fault.
    assert_eq!(
        check_bank(&early, "the early fork after the faults").await,
        early_rows
    );
    fc.stop().await.unwrap();
}

/// What the node logs when a follower's warm standby serves a fork.
const WARM_SERVED: &str = "fork served by the follower's warm standby";

/// A fork at latest of follower `tl` that its warm standby must serve (`what` names it
/// in the failure).
async fn start_warm_fork(env: &Env, tl: &TimelineInfo, what: &str) -> (TimelineInfo, Compute) {
    let served = env.node.log().matches(WARM_SERVED).count();
    let fork = start_fork(env, tl, At::Latest).await;
    assert_eq!(
        env.node.log().matches(WARM_SERVED).count(),
        served + 1,
        "{what} must be served by the warm standby:\n{}",
        env.node.log_tail()
    );
    fork
}

/// Waits until the follower's warm standby has caught up.
async fn warm_standby_ready(env: &Env, tl: &TimelineInfo) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let state = env
            .client
            .get_timeline(tl.id)
            .await
            .expect("get follower")
            .follow
            .and_then(|f| f.warm_standby);
        if state.as_deref() == Some("ready") {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the follower's warm standby did not catch up within 120 s: {state:?}\n{}",
            env.node.log_tail()
        );
        sleep_ms(250).await;
    }
}

/// The follower's replication state as the node reports it.
async fn follow_status(env: &Env, tl: &TimelineInfo) -> Option<ramify_api::FollowStatus> {
    env.client
        .get_timeline(tl.id)
        .await
        .expect("get follower")
        .follow
        .and_then(|f| f.status)
}

/// Waits until the follower reports that it is not streaming, and returns why.
async fn eventually_problem(env: &Env, tl: &TimelineInfo) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = follow_status(env, tl).await;
        if let Some(p) = status.as_ref().and_then(|s| s.problem.clone()) {
            if !p.starts_with("not streaming from the source yet") {
                return p;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no problem reported within 60 s: {status:?}"
        );
        sleep_ms(200).await;
    }
}

/// A loopback TCP relay to production that the test can cut (every connection dropped,
/// new ones closed at once) and point elsewhere (a failover).
struct Relay {
    port: u16,
    target: Arc<std::sync::atomic::AtomicU16>,
    cut: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(target: u16) -> Relay {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(std::sync::atomic::AtomicU16::new(target));
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (t, c, cs) = (target.clone(), cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(SeqCst) {
                    continue; // dropped: the network is down
                }
                let to = t.load(SeqCst);
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                cs.lock().unwrap().push(task);
            }
        });
        Relay {
            port,
            target,
            cut,
            conns,
        }
    }

    /// The network drops: every open connection is gone, new ones fail.
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.conns.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    fn point_at(&self, port: u16) {
        self.target.store(port, std::sync::atomic::Ordering::SeqCst);
    }

    fn source(&self, slot: Option<&str>) -> FollowSource {
        FollowSource {
            conninfo: format!("postgresql://replicator@127.0.0.1:{}/postgres", self.port),
            password: Some(PASSWORD.into()),
            slot: slot.map(str::to_owned),
            ..Default::default()
        }
    }
}

async fn follower_of(env: &Env, source: FollowSource) -> (TimelineInfo, Compute) {
    let tl = env
        .client
        .create_timeline(&CreateTimeline {
            follow: Some(source),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create follower: {e}\n{}", env.node.log_tail()))
        .value;
    let c = env.start(&tl).await;
    (tl, c)
}

/// Waits up to 30 s until `condition` (SQL) holds on production's standby, failing
/// with `what`.
async fn standby_replays(standby: &Compute, condition: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while query_text(standby, &format!("SELECT ({condition})::text")).await != "true" {
        assert!(std::time::Instant::now() < deadline, "{what}");
        sleep_ms(100).await;
    }
}

/// How long the network stays down in [`a_follower_rides_out_a_minute_without_network`].
fn cut_secs() -> u64 {
    std::env::var("RAMIFY_FOLLOW_CUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_rides_out_a_minute_without_network() {
    let env = Env::new(2 << 30, &[]).await;
    let prod = Production::start(&env).await;
    let relay = Relay::start(prod.pg.port()).await;
    let work = Workload::start(&prod).await;
    let (tl, fc) = follower_of(&env, relay.source(Some("ramify_net"))).await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (_, early) = start_fork(&env, &tl, At::Latest).await;
    let early_rows = check_bank(&early, "a fork before the cut").await;

    relay.cut();
    let problem = eventually_problem(&env, &tl).await;
    assert!(problem.contains("retries"), "{problem}");
    // Production goes on writing while the follower cannot hear it.
    let during = count(&prod.pg, "ledger").await;
    sleep_ms(cut_secs() * 1000).await;
    assert!(
        count(&prod.pg, "ledger").await > during,
        "production kept writing"
    );
    relay.restore();
    let transfers = work.finish().await;
    replayed(&env, &tl, prod.lsn().await).await;
    assert_eq!(
        check_bank(&fc, "the follower after the cut").await,
        count(&prod.pg, "ledger").await,
        "the follower caught up with all {transfers} transfers"
    );
    assert_eq!(check_bank(&early, "the early fork").await, early_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_follows_its_source_through_a_failover() {
    let env = Env::new(3 << 30, &[]).await;
    let mut prod = Production::start(&env).await;
    // Production's own standby, which the failover promotes.
    let sdir = env.scratch.path().join("prod-standby");
    std::fs::create_dir(&sdir).unwrap();
    env.user.chown(&sdir).unwrap();
    let mut cmd = tokio::process::Command::new(env.pg.dir().join("pg_basebackup"));
    cmd.arg("-h")
        .arg(prod.pg.run_dir())
        .args(["-p", &prod.pg.port().to_string(), "-U", "postgres", "-D"])
        .arg(sdir.join("pgdata"))
        .args(["--wal-method=stream", "--checkpoint=fast"]);
    env.user.apply_tokio(&mut cmd);
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(sdir.join("pgdata/standby.signal"), "").unwrap();
    // Like a failover tool, the standby may fetch WAL the old primary wrote but never sent:
    // a fast shutdown sometimes ends its walsender before the shutdown checkpoint is out.
    let mut auto = std::fs::OpenOptions::new()
        .append(true)
        .open(sdir.join("pgdata/postgresql.auto.conf"))
        .unwrap();
    std::io::Write::write_all(
        &mut auto,
        format!(
            "restore_command = 'cp {}/pg_wal/%f %p'\n",
            prod.pg.pgdata().display()
        )
        .as_bytes(),
    )
    .unwrap();
    env.user.chown(&sdir.join("pgdata/standby.signal")).unwrap();
    let standby = Compute::start_settings(
        &env.pg,
        &env.user,
        &sdir.join("pgdata"),
        ramify_compute::ComputeSettings {
            port: ramify_testkit::free_port(),
            listen_addresses: "127.0.0.1".into(),
            run_dir: sdir.join("run"),
            archive_command: "/bin/true".into(),
            parameters: Default::default(),
            standby: Some(ramify_compute::Standby {
                conninfo: format!(
                    "host={} port={} user=postgres",
                    prod.pg.run_dir().display(),
                    prod.pg.port()
                ),
                passfile: sdir.join("none"),
                slot: None,
            }),
            archive_timeout_secs: None,
        },
    )
    .await
    .expect("production's standby");

    let relay = Relay::start(prod.pg.port()).await;
    let (tl, fc) = follower_of(&env, relay.source(None)).await;
    prod.pg
        .execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 5); UPDATE accounts SET balance = balance - 5 WHERE id = 1; UPDATE accounts SET balance = balance + 5 WHERE id = 2")
        .await
        .unwrap();
    replayed(&env, &tl, prod.lsn().await).await;
    // Wait for production's standby to have it too, then fail over to it.
    let lsn = prod.lsn().await;
    standby_replays(
        &standby,
        &format!("pg_last_wal_replay_lsn() >= '{lsn}'"),
        "production's standby lags",
    )
    .await;
    prod.pg.stop().await.unwrap();
    // A careful failover promotes only once the standby has replayed all the old primary
    // wrote, down to its shutdown checkpoint: promoted a moment earlier, Postgres ends
    // recovery before that record and forks the new timeline off behind it, where no
    // standby that saw the record (the follower included) can follow.
    let control = std::process::Command::new(env.pg.dir().join("pg_controldata"))
        .arg(prod.pg.pgdata())
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&control.stdout).into_owned();
    let last = control
        .lines()
        .find_map(|l| l.strip_prefix("Latest checkpoint location:"))
        .expect("pg_controldata names the last checkpoint")
        .trim()
        .to_owned();
    standby_replays(
        &standby,
        &format!("pg_last_wal_replay_lsn() > '{last}'"),
        &format!("production's standby never replayed the shutdown checkpoint at {last}"),
    )
    .await;
    standby.execute("SELECT pg_promote()").await.unwrap();
    relay.point_at(standby.port());
    // The new primary writes on its new timeline; the follower switches to it.
    standby
        .execute("BEGIN; INSERT INTO ledger (src, dst, amount) VALUES (3, 4, 7); UPDATE accounts SET balance = balance - 7 WHERE id = 3; UPDATE accounts SET balance = balance + 7 WHERE id = 4; COMMIT")
        .await
        .unwrap();
    let new_lsn = current_lsn(&standby).await;
    replayed(&env, &tl, new_lsn).await;
    assert_eq!(check_bank(&fc, "the follower after the failover").await, 2);
    assert_eq!(
        query_text(&fc, "SELECT received_tli::text FROM pg_stat_wal_receiver").await,
        "2",
        "the follower streams the new primary's timeline"
    );
    // The warm standby follows the switch too (or is rebuilt past it) and serves forks of
    // the new timeline: twice, so the one rebuilt after the first fork does as well.
    for round in [
        "a fork after the failover",
        "a second fork after the failover",
    ] {
        warm_standby_ready(&env, &tl).await;
        let (_, after) = start_warm_fork(&env, &tl, round).await;
        assert_eq!(check_bank(&after, round).await, 2);
    }
}

/// Waits until the logical follower `fc` holds at least `rows` ledger rows.
async fn applied(env: &Env, tl: &TimelineInfo, fc: &Compute, rows: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let n = count(fc, "ledger").await;
        if n >= rows {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the logical follower applied {n} of {rows} ledger rows within 60 s: {:?}\n{}",
            follow_status(env, tl).await,
            env.node.log_tail()
        );
        sleep_ms(100).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logical_follower_is_an_ordinary_root_whose_forks_never_subscribe() {
    let env = Env::new(3 << 30, &[]).await;
    // A source at wal_level = replica is refused, naming the setting to change.
    let replica = Production::start_with(&env, "replica", false).await;
    replica
        .pg
        .execute("CREATE PUBLICATION bank FOR ALL TABLES")
        .await
        .unwrap();
    let e = env
        .client
        .create_timeline(&CreateTimeline {
            follow: Some(replica.logical("bank")),
            ..Default::default()
        })
        .await
        .expect_err("wal_level = replica is refused");
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(e.to_string().contains("wal_level = logical"), "{e}");
    drop(replica);

    let prod = Production::start_with(&env, "prod", true).await;
    prod.publish_bank().await;
    let before = prod.catalog_counts().await;
    let e = env
        .client
        .create_timeline(&CreateTimeline {
            follow: Some(prod.logical("nosuch")),
            ..Default::default()
        })
        .await
        .expect_err("a missing publication is refused");
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(e.to_string().contains("CREATE PUBLICATION nosuch"), "{e}");

    let work = Workload::start(&prod).await;
    sleep_ms(500).await;
    let (tl, fc) = follower_of(&env, prod.logical("bank")).await;
    let f = tl.follow.clone().expect("follow info");
    assert_eq!(f.mode, FollowMode::Logical);
    assert_eq!(f.publication.as_deref(), Some("bank"));
    let slot = format!("ramify_{}", tl.id.simple());
    assert_eq!(f.slot.as_deref(), Some(slot.as_str()));
    assert!(
        !serde_json::to_string(&tl).unwrap().contains(PASSWORD),
        "the password must never be shown"
    );
    applied(&env, &tl, &fc, count(&prod.pg, "ledger").await).await;
    let status = follow_status(&env, &tl).await.expect("subscription state");
    assert!(status.streaming, "{status:?}");
    assert!(status.last_received_at.is_some(), "{status:?}");

    // Its one login reads everything and writes nothing, whatever it tries.
    let e = env
        .client
        .set_credentials(tl.id, &app_creds("bank", false))
        .await
        .expect_err("a reader of another database is refused");
    assert!(e.to_string().contains("reads database \"postgres\""), "{e}");
    env.client
        .set_credentials(tl.id, &app_creds("postgres", false))
        .await
        .expect("a logical follower's reader login");
    let reader = app_login(fc.port()).await;
    assert!(reader
        .query_one("SELECT count(*) FROM ledger", &[])
        .await
        .is_ok());
    let e = reader
        .batch_execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)")
        .await
        .expect_err("the follower's login is read-only");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION),
        "{e:?}"
    );
    // Out of read-only mode (its own session setting), it still has no privilege to.
    reader
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    for write in [
        "INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)",
        "UPDATE accounts SET balance = 0",
        "SELECT nextval('ledger_id_seq')",
        "CREATE TABLE mine (x int)",
        "CREATE SCHEMA mine",
        "ALTER SUBSCRIPTION ramify_follow DISABLE",
    ] {
        let e = reader
            .batch_execute(write)
            .await
            .expect_err("the follower's login must not write");
        assert_eq!(
            e.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{write}: {e:?}"
        );
    }

    // At latest, under load: consistent, and at least what was committed before.
    let floor = count(&prod.pg, "ledger").await;
    applied(&env, &tl, &fc, floor).await;
    let (latest, lc) = start_fork(&env, &tl, At::Latest).await;
    let n = check_bank(&lc, "fork at latest").await;
    assert!(
        n >= floor,
        "fork at latest has {n} transfers, fewer than {floor}"
    );
    // The fork carries the subscription but never runs it: no worker, no connection to
    // the source, the slot stays the follower's.
    assert_eq!(
        query_text(&lc, "SHOW max_logical_replication_workers").await,
        "0"
    );
    assert_eq!(
        lc.query_i64("SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL")
            .await
            .unwrap(),
        0
    );
    // A fork's role — the follower's reader, inherited — adopts the data and writes;
    // sequences were advanced past the copied rows, so the fork's own inserts do not
    // collide with production's ids.
    env.client
        .set_credentials(latest.id, &app_creds("postgres", true))
        .await
        .expect("the fork's credentials");
    app_login(lc.port())
        .await
        .batch_execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)")
        .await
        .expect("a fork of a logical follower takes new ledger ids, as its own role");

    // At a time: the follower's own history, so at most what production had committed
    // by then, and consistent.
    let (t, at_time) = {
        let _paused = work.gate.lock().await;
        sleep_ms(30).await;
        let t = Utc::now();
        sleep_ms(30).await;
        (t, count(&prod.pg, "ledger").await)
    };
    applied(&env, &tl, &fc, at_time + 1).await;
    let (_, tc) = start_fork(&env, &tl, At::Time(t)).await;
    let m = check_bank(&tc, &format!("fork at {t}")).await;
    assert!(
        m <= at_time,
        "fork at {t} has {m} transfers, more than the {at_time} committed by then"
    );
    assert!(
        m >= floor,
        "fork at {t} lost transfers the follower had at latest ({m} < {floor})"
    );

    let transfers = work.finish().await;
    assert!(transfers > 100, "the workload ran ({transfers} transfers)");
    // The follower kept applying through the forks and holds the invariants itself.
    applied(&env, &tl, &fc, count(&prod.pg, "ledger").await).await;
    assert_eq!(
        check_bank(&fc, "the logical follower").await,
        count(&prod.pg, "ledger").await
    );
    // A fork of the fork is an ordinary branch, and never subscribes either.
    let (_, gc) = start_fork(&env, &latest, At::Latest).await;
    assert_eq!(check_bank(&gc, "a fork of the fork").await, n + 1);
    assert_eq!(
        query_text(&gc, "SHOW max_logical_replication_workers").await,
        "0"
    );
    // A second follower of the same source has a slot of its own (the one asked for);
    // deleting it drops that slot on the source, which would otherwise keep WAL for ever.
    let (second, mut sc) = follower_of(
        &env,
        FollowSource {
            slot: Some("second_copy".into()),
            ..prod.logical("bank")
        },
    )
    .await;
    applied(&env, &second, &sc, count(&prod.pg, "ledger").await).await;
    let slots = "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM pg_replication_slots";
    assert_eq!(
        query_text(&prod.pg, slots).await,
        format!("{slot},second_copy")
    );
    sc.stop().await.unwrap();
    env.delete_all(&[second.id], false).await;
    assert_eq!(query_text(&prod.pg, slots).await, slot);

    // Production gained nothing but the subscription's slot.
    assert_eq!(prod.catalog_counts().await, before);
    assert_eq!(
        query_text(
            &prod.pg,
            "SELECT string_agg(slot_name || ':' || slot_type, ',') FROM pg_replication_slots"
        )
        .await,
        format!("{slot}:logical")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logical_follower_rides_out_a_restart_and_names_a_refused_password_and_a_dropped_slot() {
    let env = Env::new(2 << 30, &[]).await;
    let mut prod = Production::start_with(&env, "prod", true).await;
    prod.publish_bank().await;
    let transfer =
        "INSERT INTO ledger (src, dst, amount) SELECT 1, 2, g FROM generate_series(1, 10) g";
    prod.pg.execute(transfer).await.unwrap();
    let (tl, fc) = follower_of(&env, prod.logical("bank")).await;
    applied(&env, &tl, &fc, 10).await;
    let (_, early) = start_fork(&env, &tl, At::Latest).await;
    assert_eq!(count(&early, "ledger").await, 10);

    // The source restarts: the apply worker reconnects by itself and catches up.
    prod.pg.restart().await.expect("production restarts");
    prod.pg.execute(transfer).await.unwrap();
    applied(&env, &tl, &fc, 20).await;

    // The source changes the role's password: named, with what to do.
    prod.pg
        .execute("ALTER ROLE replicator PASSWORD 'changed-Secret-7'")
        .await
        .unwrap();
    let walsender = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_replication WHERE application_name = 'ramify'";
    prod.pg.query_i64(walsender).await.unwrap();
    let problem = problem_naming(&env, &tl, "refused the password").await;
    assert!(
        problem.contains("password authentication failed"),
        "{problem}"
    );

    // Its slot is dropped on the source: named, with what to do.
    let slot = logical_slot(&tl);
    prod.pg
        .execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
        .await
        .unwrap();
    prod.pg
        .execute(&format!("ALTER ROLE replicator PASSWORD '{PASSWORD}'"))
        .await
        .unwrap();
    let problem = problem_naming(&env, &tl, "slot was dropped on the source").await;
    assert!(problem.contains(&slot), "{problem}");
    // A fork taken before the faults is untouched; the follower still holds what it had.
    assert_eq!(count(&early, "ledger").await, 10);
    assert_eq!(count(&fc, "ledger").await, 20);
}

/// Waits until the follower's problem says `what` (a fault shows other problems first,
/// such as the terminated connection), and returns it.
async fn problem_naming(env: &Env, tl: &TimelineInfo, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let p = eventually_problem(env, tl).await;
        if p.contains(what) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no problem saying {what:?} within 60 s; the last: {p}"
        );
        sleep_ms(300).await;
    }
}

const APP_PASSWORD: &str = "App-Password-0123456789abcdef";

fn app_creds(database: &str, adopt_objects: bool) -> ramify_api::Credentials {
    ramify_api::Credentials {
        user: "app".into(),
        password: APP_PASSWORD.into(),
        database: database.into(),
        disable_other_logins: false,
        adopt_objects,
    }
}

/// A TCP session as the branch role `app` in database `postgres`.
async fn app_login(port: u16) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app dbname=postgres password={APP_PASSWORD}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("log in as app");
    tokio::spawn(conn);
    c
}

fn logical_slot(tl: &TimelineInfo) -> String {
    tl.follow
        .as_ref()
        .and_then(|f| f.slot.clone())
        .expect("a logical follower names its slot")
}

/// A source's schema is its owner's SQL: a trigger that would run a program on the
/// storage node's machine (as the user owning every timeline) if it ran as a superuser.
/// Marked to fire only under replication, it never fires on production; in the follower
/// it fires as the role that owns the copy, which may not run programs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_sources_schema_never_runs_as_a_superuser_here() {
    let env = Env::new(2 << 30, &[]).await;
    let prod = Production::start_with(&env, "prod", true).await;
    let marker = std::env::temp_dir().join(format!(
        "ramify-pwned-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or(0)
    ));
    let program = format!("touch {}", marker.display());
    prod.pg
        .execute(&format!(
            "CREATE TABLE trap (x int PRIMARY KEY); \
             INSERT INTO trap VALUES (1); \
             CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql AS $f$ \
               BEGIN COPY (SELECT 1) TO PROGRAM '{program}'; RETURN NEW; END $f$; \
             CREATE TRIGGER trap BEFORE INSERT ON trap FOR EACH ROW EXECUTE FUNCTION trap(); \
             ALTER TABLE trap ENABLE REPLICA TRIGGER trap; \
             CREATE PUBLICATION bank FOR TABLE accounts, ledger, trap; \
             GRANT SELECT ON accounts, ledger, trap TO replicator"
        ))
        .await
        .unwrap();
    // The trap works: run by a superuser under replication, it runs the program.
    prod.pg
        .execute("SET session_replication_role = replica; INSERT INTO trap VALUES (0); RESET session_replication_role")
        .await
        .unwrap();
    assert!(marker.exists(), "the trap did not fire for a superuser");
    std::fs::remove_file(&marker).unwrap();
    let refused = "pg_execute_server_program";
    match env
        .client
        .create_timeline(&CreateTimeline {
            follow: Some(prod.logical("bank")),
            ..Default::default()
        })
        .await
    {
        // The initial copy fires the trigger, as the follower's owner role.
        Err(e) => assert!(e.to_string().contains(refused), "{e}"),
        // Or the first change applied does.
        Ok(tl) => {
            let tl = tl.value;
            let _fc = env.start(&tl).await;
            prod.pg
                .execute("INSERT INTO trap VALUES (2)")
                .await
                .unwrap();
            let problem = problem_naming(&env, &tl, refused).await;
            assert!(problem.contains("COPY"), "{problem}");
        }
    }
    assert!(
        !marker.exists(),
        "the source's trigger ran a program on this machine"
    );
    // A refused copy leaves no slot on production.
    assert_eq!(
        prod.pg
            .query_i64("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical' AND NOT active")
            .await
            .unwrap(),
        0
    );
}

/// The node is killed once the subscription runs, in the middle of the initial copy: at
/// its next start the temporary Postgres that was loading is stopped, the half-made
/// follower is gone, and so are the slots it made on production.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_a_logical_copy_leaves_nothing_on_the_source() {
    let mut env = Env::new(2 << 30, &[]).await;
    let prod = Production::start_with(&env, "prod", true).await;
    prod.publish_bank().await;
    env.node
        .set_env(&[("RAMIFY_FAILPOINTS", "logical.after_subscribe=kill")]);
    env.node.restart().await.unwrap();
    env.client
        .create_timeline(&CreateTimeline {
            follow: Some(prod.logical("bank")),
            ..Default::default()
        })
        .await
        .expect_err("the node dies at the failpoint");
    let slots = "SELECT count(*) FROM pg_replication_slots";
    assert!(
        prod.pg.query_i64(slots).await.unwrap() >= 1,
        "the copy had made its slot on production"
    );
    let loaders = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path().join("cwd")).ok())
            .filter(|cwd| {
                cwd.starts_with(env.scratch.path()) && cwd.to_string_lossy().contains(".creating-")
            })
            .count()
    };
    assert!(loaders() >= 1, "the schema loader outlived the node");
    env.node.set_env(&[]);
    env.node.restart().await.unwrap();
    assert_eq!(
        loaders(),
        0,
        "the node's start left the schema loader running"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while prod.pg.query_i64(slots).await.unwrap() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the interrupted copy's slots are still on production:\n{}",
            env.node.log_tail()
        );
        sleep_ms(200).await;
    }
    assert!(env.client.list_timelines().await.unwrap().is_empty());
}

/// Postgres `major` from `make tools` (scripts/build-tools.sh puts it in
/// `$RAMIFY_TOOLS/pg<major>`): required under `make test`, else a missing one skips the
/// test, saying so.
fn other_major(major: u32) -> Option<PgBin> {
    let tools = std::env::var("RAMIFY_TOOLS").unwrap_or_else(|_| "/var/tmp/ramify-tools".into());
    let dir = std::path::Path::new(&tools).join(format!("pg{major}/bin"));
    match PgBin::find(Some(&dir)) {
        Ok(bin) => Some(bin),
        Err(e) if std::env::var("RAMIFY_REQUIRE_TOOLS").as_deref() == Ok("1") => {
            panic!("Postgres {major} is required under make test (scripts/build-tools.sh fetches it): {e}")
        }
        Err(e) => {
            eprintln!("skipped: no Postgres {major} here ({e}); `make tools` fetches it");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_of_another_major_is_refused_physically_and_followed_logically_when_older() {
    let (Some(pg14), Some(pg16)) = (other_major(14), other_major(16)) else {
        return;
    };
    let env = Env::new(2 << 30, &[]).await;
    let refused = |source: FollowSource| refused(&env, source);
    // Postgres 16: a standby must run its primary's major, and pg_dump 15 cannot read
    // a newer schema; each refusal names both majors and what to use instead.
    let newer = Production::start_on(&env, &pg16, "pg16", true).await;
    newer.publish_bank().await;
    let e = refused(newer.source(Some("ramify_follow"))).await;
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(
        e.to_string()
            .contains("runs Postgres 16 and this node runs Postgres 15")
            && e.to_string().contains("follow it logically"),
        "{e}"
    );
    let e = refused(newer.logical("bank")).await;
    assert_eq!(e.code(), Some("source_refused"), "{e}");
    assert!(
        e.to_string()
            .contains("Postgres 16, newer than this node's Postgres 15"),
        "{e}"
    );
    assert!(env.client.list_timelines().await.unwrap().is_empty());
    assert_eq!(
        newer
            .pg
            .query_i64("SELECT count(*) FROM pg_replication_slots")
            .await
            .unwrap(),
        0,
        "a refused source is left without a slot"
    );
    drop(newer);

    // Postgres 14: no physical follower, but a logical one under load, whose fork is an
    // ordinary Postgres 15 branch holding the bank's invariants.
    let older = Production::start_on(&env, &pg14, "pg14", true).await;
    older.publish_bank().await;
    let e = refused(older.source(None)).await;
    assert!(
        e.to_string()
            .contains("runs Postgres 14 and this node runs Postgres 15"),
        "{e}"
    );
    let work = Workload::start(&older).await;
    sleep_ms(300).await;
    let (tl, fc) = follower_of(&env, older.logical("bank")).await;
    let floor = count(&older.pg, "ledger").await;
    applied(&env, &tl, &fc, floor).await;
    let (_, lc) = start_fork(&env, &tl, At::Latest).await;
    assert_eq!(query_text(&lc, "SHOW server_version_num").await[..2], *"15");
    let n = check_bank(&lc, "fork of a Postgres 14 source's follower").await;
    assert!(n >= floor, "the fork has {n} transfers, fewer than {floor}");
    let transfers = work.finish().await;
    assert!(transfers > 50, "the workload ran ({transfers} transfers)");
    let all = count(&older.pg, "ledger").await;
    applied(&env, &tl, &fc, all).await;
    assert_eq!(check_bank(&fc, "the follower of Postgres 14").await, all);
}
