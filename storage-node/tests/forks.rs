//! Acceptance 1–4: forks at latest (busy and quiet parent), isolation, forks at an LSN and
//! a time, three generations with the parent deleted. Real Postgres on a reflink scratch.

mod common;

use std::process::Stdio;

use common::*;
use ramify_api::At;

const GIB: u64 = 1 << 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_at_latest_under_pgbench_load_and_quiet() {
    let env = Env::new(6 * GIB, &[]).await;
    let (root, rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "5", "-q", "postgres"])
        .await
        .expect("pgbench -i");

    // Busy parent: pgbench writes while we fork.
    let mut load = tokio::process::Command::new(env.pg.pgbench().expect("pgbench"));
    load.args([
        "-h",
        rc.run_dir().to_str().unwrap(),
        "-p",
        &rc.port().to_string(),
        "-U",
        "postgres",
    ])
    .args(["-c", "4", "-T", "8", "-n", "postgres"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    env.user.apply_tokio(&mut load);
    let mut load = load.spawn().expect("pgbench load");
    sleep_ms(1500).await;
    let before = count(&rc, "pgbench_history").await;
    let busy = env.fork(root.id, At::Latest).await;
    let after = count(&rc, "pgbench_history").await;
    let status = load.wait().await.expect("pgbench");
    assert!(status.success(), "pgbench load failed");
    assert!(
        after > before,
        "pgbench was not writing during the fork ({before} → {after})"
    );

    let bc = env.start(&busy).await;
    let in_branch = count(&bc, "pgbench_history").await;
    assert!(
        before <= in_branch && in_branch <= after,
        "branch has {in_branch} history rows, parent had {before} before and {after} after the fork"
    );
    bc.pg_amcheck()
        .await
        .expect("pg_amcheck on the busy-parent branch");
    let info = env.get(busy.id).await;
    assert!(info.fork_lsn.is_some() && info.fork_time.is_some());

    // Quiet parent: the branch is identical, table by table.
    let quiet = env.fork(root.id, At::Latest).await;
    let qc = env.start(&quiet).await;
    for table in [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ] {
        assert_eq!(
            count(&qc, table).await,
            count(&rc, table).await,
            "{table} count"
        );
        assert_eq!(
            table_checksum(&qc, table).await,
            table_checksum(&rc, table).await,
            "{table} checksum"
        );
    }
    qc.pg_amcheck()
        .await
        .expect("pg_amcheck on the quiet-parent branch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branches_are_isolated_from_parent_and_siblings() {
    let env = Env::new(4 * GIB, &[]).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE t (who text, n int); INSERT INTO t VALUES ('root', 0)")
        .await
        .unwrap();
    let a = env.fork(root.id, At::Latest).await;
    let b = env.fork(root.id, At::Latest).await;
    let (ac, bc) = (env.start(&a).await, env.start(&b).await);
    rc.execute("INSERT INTO t VALUES ('root', 1)")
        .await
        .unwrap();
    ac.execute("INSERT INTO t VALUES ('a', 1)").await.unwrap();
    bc.execute("INSERT INTO t VALUES ('b', 1); CREATE TABLE only_b (x int)")
        .await
        .unwrap();
    for (c, me) in [(&rc, "root"), (&ac, "a"), (&bc, "b")] {
        for other in ["root", "a", "b"] {
            let n = c
                .query_i64(&format!(
                    "SELECT count(*) FROM t WHERE who = '{other}' AND n = 1"
                ))
                .await
                .unwrap();
            assert_eq!(
                n,
                (me == other) as i64,
                "{me} sees {n} rows written by {other}"
            );
        }
        assert_eq!(
            c.query_i64("SELECT count(*) FROM t WHERE n = 0")
                .await
                .unwrap(),
            1
        );
        assert_eq!(table_exists(c, "only_b").await, me == "b");
    }
    // Each branch promoted to a Postgres timeline of its own and archives separately.
    let (ai, bi) = (env.get(a.id).await, env.get(b.id).await);
    assert_ne!(ai.archive, bi.archive);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_at_lsn_and_at_time() {
    let env = Env::new(4 * GIB, &[]).await;
    let (root, rc) = env.root().await;
    rc.execute("CREATE TABLE batches (batch int, i int)")
        .await
        .unwrap();
    env.client
        .create_snapshot(root.id, "before-batches")
        .await
        .unwrap();
    let mut lsn_after = vec![];
    for batch in 1..=3 {
        rc.execute(&format!(
            "INSERT INTO batches SELECT {batch}, g FROM generate_series(1, 1000) g"
        ))
        .await
        .unwrap();
        lsn_after.push(current_lsn(&rc).await);
    }
    let at2 = env.fork(root.id, At::Lsn(lsn_after[1])).await;
    assert_eq!(at2.fork_lsn, Some(lsn_after[1]));
    assert!(
        at2.fork_time.is_some(),
        "fork_time of an LSN fork is reported"
    );
    let c2 = env.start(&at2).await;
    assert_eq!(
        c2.query_i64("SELECT count(*) FROM batches WHERE batch IN (1, 2)")
            .await
            .unwrap(),
        2000
    );
    assert_eq!(
        c2.query_i64("SELECT count(*) FROM batches WHERE batch = 3")
            .await
            .unwrap(),
        0
    );
    c2.pg_amcheck().await.expect("pg_amcheck");

    // A time taken before a DROP TABLE brings the table back.
    rc.execute("CREATE TABLE precious AS SELECT g FROM generate_series(1, 500) g")
        .await
        .unwrap();
    sleep_ms(50).await;
    let client = rc.client().await.unwrap();
    let t: chrono::DateTime<chrono::Utc> = client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    sleep_ms(50).await;
    rc.execute("DROP TABLE precious").await.unwrap();
    assert!(!table_exists(&rc, "precious").await);
    let back = env.fork(root.id, At::Time(t)).await;
    let ft = back.fork_time.expect("fork_time");
    assert!(ft <= t, "fork_time {ft} is after the target {t}");
    let bc = env.start(&back).await;
    assert!(
        table_exists(&bc, "precious").await,
        "the dropped table is back"
    );
    assert_eq!(count(&bc, "precious").await, 500);
    assert_eq!(count(&bc, "batches").await, 3000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_generations_survive_deleting_their_parent() {
    let env = Env::new(4 * GIB, &[]).await;
    let (root, mut rc) = env.root().await;
    rc.execute("CREATE TABLE gen (g int); INSERT INTO gen VALUES (0)")
        .await
        .unwrap();
    let child = env.fork(root.id, At::Latest).await;
    let mut cc = env.start(&child).await;
    cc.execute("INSERT INTO gen VALUES (1)").await.unwrap();
    let grand = env.fork(child.id, At::Latest).await;
    let mut gc = env.start(&grand).await;
    gc.execute("INSERT INTO gen VALUES (2)").await.unwrap();
    // A fork of the grandchild at an LSN inside its own history (its fork snapshot).
    let lsn = current_lsn(&gc).await;
    gc.execute("INSERT INTO gen VALUES (3)").await.unwrap();

    // Delete the root and the child (stop their computes first: deletion refuses a
    // running compute without force).
    rc.stop().await.unwrap();
    env.client
        .delete_timeline(root.id, false)
        .await
        .expect("delete root");
    env.client
        .delete_timeline(child.id, true)
        .await
        .expect("force-delete child");
    cc.stop().await.ok();
    assert_eq!(count(&gc, "gen").await, 4);
    gc.execute("INSERT INTO gen VALUES (4)").await.unwrap();
    gc.pg_amcheck().await.expect("pg_amcheck");
    let great = env.fork(grand.id, At::Lsn(lsn)).await;
    let g3 = env.start(&great).await;
    let rows: String = g3
        .client()
        .await
        .unwrap()
        .query_one("SELECT string_agg(g::text, ',' ORDER BY g) FROM gen", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, "0,1,2", "great-grandchild at the LSN before row 3");
    // Restart the grandchild from scratch after its parents are gone.
    gc.stop().await.unwrap();
    gc.restart().await.unwrap();
    assert_eq!(count(&gc, "gen").await, 5);
    let listed: Vec<_> = env
        .client
        .list_timelines()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    assert!(!listed.contains(&root.id) && !listed.contains(&child.id));
    assert!(listed.contains(&grand.id) && listed.contains(&great.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_of_a_stopped_or_crashed_parent_and_at_a_snapshot() {
    let env = Env::new(4 * GIB, &[]).await;
    let (root, mut rc) = env.root().await;
    rc.execute("CREATE TABLE t (phase text)").await.unwrap();
    rc.execute("INSERT INTO t VALUES ('one')").await.unwrap();
    let s1 = env
        .client
        .create_snapshot(root.id, "after-one")
        .await
        .unwrap();
    rc.execute("INSERT INTO t VALUES ('two')").await.unwrap();
    let lsn_two = current_lsn(&rc).await;
    rc.execute("INSERT INTO t VALUES ('three')").await.unwrap();

    // Stopped cleanly: latest is a plain clone; an LSN reads the archive and pg_wal.
    rc.stop().await.unwrap();
    let latest = env.fork(root.id, At::Latest).await;
    let mut lc = env.start(&latest).await;
    assert_eq!(rows(&lc).await, "one,three,two");
    lc.execute("INSERT INTO t VALUES ('latest-only')")
        .await
        .unwrap();
    let at_snap = env.fork(root.id, At::Snapshot("after-one".into())).await;
    assert_eq!(at_snap.fork_lsn, Some(s1.end_lsn));
    assert_eq!(rows(&env.start(&at_snap).await).await, "one");
    let at_lsn = env.fork(root.id, At::Lsn(lsn_two)).await;
    assert_eq!(rows(&env.start(&at_lsn).await).await, "one,two");
    // A fork of the stopped branch at its own fork point, and at its latest state.
    lc.stop().await.unwrap();
    let again = env.fork(latest.id, At::Snapshot("fork".into())).await;
    assert_eq!(rows(&env.start(&again).await).await, "one,three,two");
    let chain = env.fork(latest.id, At::Latest).await;
    assert_eq!(
        rows(&env.start(&chain).await).await,
        "latest-only,one,three,two"
    );

    // Crashed (kill -9 after a commit): crash recovery on the clone keeps every commit.
    rc.restart().await.unwrap();
    rc.execute("INSERT INTO t VALUES ('four')").await.unwrap();
    rc.kill9().unwrap();
    let crashed = env.fork(root.id, At::Latest).await;
    let cc = env.start(&crashed).await;
    assert_eq!(rows(&cc).await, "four,one,three,two");
    cc.pg_amcheck().await.expect("pg_amcheck");
}

async fn rows(c: &ramify_testkit::Compute) -> String {
    query_text(c, "SELECT string_agg(phase, ',' ORDER BY phase) FROM t").await
}
