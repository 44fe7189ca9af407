//! Real Postgres: initdb, start, crash, recover, stop, and a start that fails.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use ramify_compute::process::{self, SERVER_LOG};
use ramify_compute::{ComputeSettings, PgBin, PgUser, ProcessError, StopMode};

const START_TIMEOUT: Duration = Duration::from_secs(60);

fn settings(dir: &Path, port: u16) -> ComputeSettings {
    ComputeSettings {
        port,
        listen_addresses: String::new(),
        run_dir: dir.join("run"),
        archive_command: "true".to_owned(),
        parameters: BTreeMap::new(),
        standby: None,
        archive_timeout_secs: None,
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A temp dir the Postgres user can traverse.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn initdb_start_crash_recover_stop() {
    let (bin, user) = match (PgBin::find(None), PgUser::resolve(None)) {
        (Ok(b), Ok(u)) => (b, u),
        (b, u) => {
            eprintln!(
                "skipping: no Postgres ({:?}) or user ({:?})",
                b.err(),
                u.err()
            );
            return;
        }
    };
    let dir = workdir();
    let pgdata = dir.path().join("pgdata");
    process::initdb(&bin, &user, &pgdata).await.unwrap();
    let err = process::initdb(&bin, &user, &pgdata).await.unwrap_err();
    assert!(matches!(err, ProcessError::NotEmpty { .. }), "{err}");

    let s = settings(dir.path(), free_port());
    let running = process::start(&bin, &user, &pgdata, &s, START_TIMEOUT)
        .await
        .unwrap();
    assert!(process::is_running(&pgdata).unwrap());
    assert!(s.run_dir.join(format!(".s.PGSQL.{}", s.port)).exists());
    let conf = std::fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
    assert!(conf.ends_with("include_if_exists = 'ramify.conf'\n"));

    let err = process::start(&bin, &user, &pgdata, &s, START_TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, ProcessError::AlreadyRunning { .. }), "{err}");

    process::kill9(&pgdata).unwrap();
    assert!(!process::is_running(&pgdata).unwrap());
    drop(running);

    // Crash recovery, then a clean stop through the handle.
    let running = process::start(&bin, &user, &pgdata, &s, START_TIMEOUT)
        .await
        .unwrap();
    let log = std::fs::read_to_string(running.log_path()).unwrap();
    assert!(log.contains("not properly shut down"), "{log}");
    running.stop(&bin, &user, StopMode::Fast).await.unwrap();
    assert!(!process::is_running(&pgdata).unwrap());
    process::stop(&bin, &user, &pgdata, StopMode::Fast)
        .await
        .unwrap();

    // A start that dies reports what the server logged.
    let mut bad = s.clone();
    bad.parameters
        .insert("shared_buffers".into(), "lots".into());
    let err = process::start(&bin, &user, &pgdata, &bad, START_TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ProcessError::StartFailed { .. }), "{msg}");
    assert!(msg.contains("shared_buffers"), "{msg}");
    assert!(msg.contains(SERVER_LOG), "{msg}");
    assert!(!process::is_running(&pgdata).unwrap());

    // So does an archive recovery that ends in FATAL. Recovery settings are never user
    // parameters (they are refused); the storage node writes them into PGDATA, as here.
    let conf = pgdata.join("postgresql.auto.conf");
    let mut auto = std::fs::read_to_string(&conf).unwrap();
    auto.push_str("restore_command = 'false'\nrecovery_target_lsn = 'FFFF/0'\n");
    std::fs::write(&conf, auto).unwrap();
    let unreachable = s.clone();
    let signal = pgdata.join("recovery.signal");
    std::fs::write(&signal, "").unwrap();
    user.chown(&signal).unwrap();
    let err = process::start(&bin, &user, &pgdata, &unreachable, START_TIMEOUT)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("FATAL:  recovery ended before configured recovery target was reached"),
        "{err}"
    );
}
