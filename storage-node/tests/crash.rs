//! Acceptance 6: `kill -9` of the storage node in the middle of a fork leaves no half
//! timeline, does not touch the parent, and a retry with the same id succeeds.

mod common;

use common::*;
use ramify_api::{At, CreateTimeline, TimelineId};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fork_then_restart_and_retry() {
    // No periodic snapshots: every control connection seen below would be the dead node's.
    let mut env = Env::new(
        6 << 30,
        &["--snapshot-interval", "0", "--snapshot-wal-bytes", "0"],
    )
    .await;
    let (root, rc) = env.root().await;
    rc.pgbench(&["-i", "-s", "10", "-q", "postgres"])
        .await
        .expect("pgbench -i");
    let before = table_checksum(&rc, "pgbench_accounts").await;
    let data = std::path::PathBuf::from(&root.pgdata)
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .to_path_buf();

    let mut interrupted = 0;
    for delay_ms in [2u64, 10, 25, 50, 80, 120] {
        let id = TimelineId::new_v4();
        let req = CreateTimeline {
            id: Some(id),
            parent: Some(root.id),
            at: Some(At::Latest),
            follow: None,
            backup: None,
            from_backup: None,
        };
        let client = env.client.clone();
        let r = req.clone();
        let fork = tokio::spawn(async move { client.create_timeline(&r).await });
        sleep_ms(delay_ms).await;
        env.node.kill9().expect("kill -9");
        let finished = fork.await.unwrap().is_ok();
        env.node.restart().await.expect("restart after kill -9");

        // No half timeline: the id is either absent or complete, and nothing is staged.
        let listed = env.client.list_timelines().await.unwrap();
        let present = listed.iter().any(|t| t.id == id);
        if !present {
            interrupted += 1;
        }
        assert!(
            !finished || present,
            "a fork acknowledged before the kill must survive it"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

        // The parent is unchanged and not stuck in backup mode.
        assert_eq!(table_checksum(&rc, "pgbench_accounts").await, before);
        // The dead node's control connection (and with it any backup) ends within moments.
        let mut backups = 1;
        for _ in 0..50 {
            backups = rc
                .query_i64("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ramify-storage'")
                .await
                .unwrap();
            if backups == 0 {
                break;
            }
            sleep_ms(100).await;
        }
        assert_eq!(backups, 0, "a control connection of the dead node survived");

        // A retry with the same id succeeds and gives a working branch.
        let tl = env
            .client
            .create_timeline(&req)
            .await
            .expect("retry with the same id")
            .value;
        assert_eq!(tl.id, id);
        let mut c = env.start(&tl).await;
        assert_eq!(table_checksum(&c, "pgbench_accounts").await, before);
        c.stop().await.unwrap();
        env.client.delete_timeline(id, false).await.unwrap();
    }
    eprintln!("{interrupted} of 6 kills landed before the fork was committed");
}
