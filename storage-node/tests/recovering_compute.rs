//! Reading timelines whose compute is a hot standby still in recovery. Such a compute
//! answers queries but has no flush LSN (`pg_current_wal_flush_lsn` fails with "recovery
//! is in progress"); listing and getting timelines once answered 500 for it. Its restore
//! window now ends at its fork point (none for a root).

mod common;

use std::path::Path;

use common::*;
use ramify_api::{At, ComputeState, TimelineId, TimelineInfo};
use ramify_testkit::Compute;

/// Restarts `c` (on `tl`) as a hot standby: with `standby.signal`, no primary and nothing
/// new to restore, Postgres stays in recovery and serves read-only queries.
async fn restart_as_standby(env: &Env, tl: &TimelineInfo, c: &mut Compute) -> Compute {
    // Ramify does not let a compute's parameters set it, and a fork's recovery include
    // turns it off: ALTER SYSTEM (postgresql.auto.conf, read last) turns it on.
    c.execute("ALTER SYSTEM SET hot_standby = on")
        .await
        .expect("hot_standby = on");
    c.stop().await.expect("stop the compute");
    let signal = Path::new(&tl.pgdata).join("standby.signal");
    std::fs::write(&signal, b"").expect("write standby.signal");
    env.user.chown(&signal).expect("chown standby.signal");
    let standby = env.start(tl).await;
    assert_eq!(query_text(&standby, "SHOW hot_standby").await, "on");
    assert_eq!(
        standby
            .query_i64("SELECT pg_is_in_recovery()::int")
            .await
            .expect("pg_is_in_recovery"),
        1,
        "the compute of {} must be in recovery",
        tl.id
    );
    standby
}

/// The timeline `id` as listed; panics if the list fails or lacks it.
async fn listed(env: &Env, id: TimelineId) -> TimelineInfo {
    env.client
        .list_timelines()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "GET /v1/timelines with a compute in recovery: {e}\nnode log:\n{}",
                env.node.log_tail()
            )
        })
        .into_iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("timeline {id} is not listed"))
}

async fn got(env: &Env, id: TimelineId) -> TimelineInfo {
    env.client.get_timeline(id).await.unwrap_or_else(|e| {
        panic!(
            "GET /v1/timelines/{id} with its compute in recovery: {e}\nnode log:\n{}",
            env.node.log_tail()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_get_answer_while_a_compute_is_in_recovery() {
    let env = Env::new(
        2 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
    )
    .await;
    let (root, mut rc) = env.root().await;
    rc.execute("CREATE TABLE t AS SELECT generate_series(1, 100) AS i")
        .await
        .expect("create t");
    let fork = env.fork(root.id, At::Latest).await;
    let fork_lsn = fork.fork_lsn.expect("a fork has a fork point");
    // Its first start promotes it (a timeline of its own); the standby comes after.
    let mut fc = env.start(&fork).await;
    let mut fork_standby = restart_as_standby(&env, &fork, &mut fc).await;
    let mut root_standby = restart_as_standby(&env, &root, &mut rc).await;

    for (what, tl) in [
        ("listed", listed(&env, fork.id).await),
        ("got", got(&env, fork.id).await),
    ] {
        assert_eq!(tl.compute, ComputeState::Running, "fork {what}");
        assert_eq!(
            tl.restore_window.to_lsn,
            Some(fork_lsn),
            "fork {what}: the window of a compute in recovery ends at its fork point"
        );
        assert_eq!(
            tl.restore_window.to_time, fork.fork_time,
            "fork {what}: the window ends at the fork point's time"
        );
    }
    for (what, tl) in [
        ("listed", listed(&env, root.id).await),
        ("got", got(&env, root.id).await),
    ] {
        assert_eq!(tl.compute, ComputeState::Running, "root {what}");
        assert_eq!(
            tl.restore_window.to_lsn, None,
            "root {what}: a root has no fork point to end its window at"
        );
    }

    fork_standby.stop().await.expect("stop the fork's standby");
    root_standby.stop().await.expect("stop the root's standby");
    env.delete_all(&[fork.id, root.id], false).await;
}
