//! Following roots: a "production" Postgres started here on a loopback port, a bank
//! workload on it, a root that follows it as a hot standby, and forks of that root at
//! latest, at an LSN and at a time taken under load; then the faults a follower meets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use ramify_api::{At, CreateTimeline, FollowSource, Lsn, TimelineInfo};
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
        let dir = env.scratch.path().join("prod");
        std::fs::create_dir(&dir).expect("production's directory");
        env.user.chown(&dir).expect("chown production's directory");
        let pg = Compute::start(
            &env.pg,
            &env.user,
            &dir.join("pgdata"),
            &dir.join("run"),
            "/bin/true",
            true,
            &[],
        )
        .await
        .expect("production Postgres");
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
        let info = env.client.get_timeline(tl.id).await.expect("get follower");
        let status = info.follow.and_then(|f| f.status);
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

async fn follower(env: &Env, prod: &Production, slot: Option<&str>) -> (TimelineInfo, Compute) {
    let tl = env
        .client
        .create_timeline(&CreateTimeline {
            follow: Some(prod.source(slot)),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("create follower: {e}\n{}", env.node.log_tail()))
        .value;
    let c = env.start(&tl).await;
    (tl, c)
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
    let status = env
        .client
        .get_timeline(tl.id)
        .await
        .unwrap()
        .follow
        .and_then(|f| f.status)
        .expect("replication state");
    assert!(status.streaming, "{status:?}");
    assert!(
        status.lag_bytes.is_some()
            && status.lag_seconds.is_some()
            && status.last_received_at.is_some(),
        "{status:?}"
    );
    let refused = fc
        .execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 2, 3)")
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("read-only transaction")),
        "a follower must refuse writes: {refused:?}"
    );

    // At latest, with transfers committing all the while.
    let floor = count(&prod.pg, "ledger").await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (latest, lc) = start_fork(&env, &tl, At::Latest).await;
    let n = check_bank(&lc, "fork at latest").await;
    assert!(
        n >= floor,
        "fork at latest has {n} transfers, fewer than the {floor} committed before it"
    );
    lc.execute("INSERT INTO ledger (src, dst, amount) VALUES (1, 1, 0)")
        .await
        .expect("a fork of a follower is writable");

    // At an LSN: the exact prefix committed before it.
    let (lsn, at_lsn) = {
        let _paused = work.gate.lock().await;
        (prod.lsn().await, count(&prod.pg, "ledger").await)
    };
    sleep_ms(300).await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (_, xc) = start_fork(&env, &tl, At::Lsn(lsn)).await;
    assert_eq!(
        check_bank(&xc, "fork at an LSN").await,
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
    sleep_ms(300).await;
    replayed(&env, &tl, prod.lsn().await).await;
    let (_, tc) = start_fork(&env, &tl, At::Time(t)).await;
    assert_eq!(
        check_bank(&tc, "fork at a time").await,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_refuses_or_cannot_be_reached_is_named() {
    let env = Env::new(1 << 30, &[]).await;
    let prod = Production::start(&env).await;
    let create = |source: FollowSource| {
        let client = env.client.clone();
        async move {
            client
                .create_timeline(&CreateTimeline {
                    follow: Some(source),
                    ..Default::default()
                })
                .await
                .expect_err("refused")
        }
    };
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
    })
    .await;
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "{e}");

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

/// Waits until the follower reports that it is not streaming, and returns why.
async fn eventually_problem(env: &Env, tl: &TimelineInfo) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = env
            .client
            .get_timeline(tl.id)
            .await
            .unwrap()
            .follow
            .and_then(|f| f.status);
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
