//! The harness itself, end to end: reflink scratch, real Postgres, cleanup after panics.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, ComputeError, Scratch, StorageNodeError, StorageNodeProcess};

const GIB: u64 = 1024 * 1024 * 1024;

fn is_mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let wanted = path.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(wanted))
}

fn loop_devices_of(image: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// pgdata (empty, 0700, owned by the Postgres user, as the storage node makes it) and run/.
fn timeline_dirs(scratch: &Scratch, user: &PgUser) -> (PathBuf, PathBuf) {
    let pgdata = scratch.path().join("pgdata");
    let run = scratch.path().join("run");
    for dir in [&pgdata, &run] {
        std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
        user.chown(dir).unwrap();
    }
    (pgdata, run)
}

/// Asserts the scratch's mount, loop device and files are gone once it was dropped.
fn assert_cleaned_up(mountpoint: &Path, image: Option<&Path>) {
    assert!(
        !is_mounted(mountpoint),
        "{} still mounted",
        mountpoint.display()
    );
    if let Some(image) = image {
        assert_eq!(loop_devices_of(image), "", "loop device left behind");
        assert!(!image.exists(), "{} left behind", image.display());
    }
    assert!(!mountpoint.exists(), "{} left behind", mountpoint.display());
}

fn pg() -> (PgBin, PgUser) {
    let bin = PgBin::find(None).expect("Postgres installed (apt-get install postgresql-15)");
    let user = PgUser::resolve(None).expect("a user to run Postgres as");
    (bin, user)
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_on_reflink_scratch_and_clean_unmount() {
    let (bin, user) = pg();
    let scratch = Scratch::reflink(GIB).unwrap();
    if nix::unistd::Uid::effective().is_root() {
        assert!(
            scratch.is_reflink(),
            "root with xfsprogs should get a reflink scratch"
        );
    }
    let mountpoint = scratch.path().to_path_buf();
    let image = scratch.image().map(Path::to_path_buf);
    let used_before = scratch.df_used_bytes().unwrap();

    let (pgdata, run) = timeline_dirs(&scratch, &user);
    let mut compute = Compute::start(
        &bin,
        &user,
        &pgdata,
        &run,
        "true",
        true,
        &[("work_mem", "8MB")],
    )
    .await
    .unwrap();
    compute
        .execute("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
        .await
        .unwrap();
    assert_eq!(
        compute.query_i64("SELECT count(*) FROM t").await.unwrap(),
        10_000
    );
    // postgresParameters reach the server.
    assert_eq!(
        compute
            .query_i64("SELECT (current_setting('work_mem') = '8MB')::int")
            .await
            .unwrap(),
        1
    );
    let not_int = compute.query_i64("SELECT 'x'::text").await;
    assert!(
        matches!(not_int, Err(ComputeError::NotAnInteger { .. })),
        "{not_int:?}"
    );
    compute.pg_amcheck().await.unwrap();
    let bench = compute.pgbench(&["-i", "-s", "1", "-q"]).await;
    assert!(bench.is_ok(), "{bench:?}");
    compute.stop().await.unwrap();
    assert!(!compute.is_running());
    assert!(compute.query_i64("SELECT 1").await.is_err());

    scratch.sync().unwrap();
    assert!(scratch.df_used_bytes().unwrap() > used_before);
    drop(compute);
    drop(scratch);
    assert_cleaned_up(&mountpoint, image.as_deref());
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_and_recover() {
    let (bin, user) = pg();
    let scratch = Scratch::reflink(GIB).unwrap();
    let (pgdata, run) = timeline_dirs(&scratch, &user);
    let mut compute = Compute::start(&bin, &user, &pgdata, &run, "true", true, &[])
        .await
        .unwrap();
    compute
        .execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g")
        .await
        .unwrap();
    compute.kill9().unwrap();
    compute.restart().await.unwrap();
    assert_eq!(
        compute.query_i64("SELECT count(*) FROM t").await.unwrap(),
        500
    );
    compute.pg_amcheck().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_test_still_unmounts_and_stops_everything() {
    let (bin, user) = pg();
    let (tx, rx) = std::sync::mpsc::channel();
    let task = tokio::spawn(async move {
        let scratch = Scratch::reflink(GIB).unwrap();
        let (pgdata, run) = timeline_dirs(&scratch, &user);
        let compute = Compute::start(&bin, &user, &pgdata, &run, "true", true, &[])
            .await
            .unwrap();
        // A process the test forgot about, keeping the mount busy.
        let holder = Command::new("sleep")
            .arg("600")
            .current_dir(scratch.path())
            .spawn()
            .unwrap();
        tx.send((
            scratch.path().to_path_buf(),
            scratch.image().map(Path::to_path_buf),
            pgdata,
            holder,
        ))
        .unwrap();
        let _keep = (&compute, &scratch);
        panic!("test body failed");
    });
    let err = task.await.unwrap_err();
    assert!(err.is_panic());
    let (mountpoint, image, pgdata, mut holder) = rx.recv().unwrap();
    assert_cleaned_up(&mountpoint, image.as_deref());
    assert!(!ramify_compute::process::is_running(&pgdata).unwrap_or(false));
    use std::os::unix::process::ExitStatusExt;
    if image.is_some() {
        // The forgotten process was SIGKILLed so the volume could be unmounted.
        assert_eq!(holder.wait().unwrap().signal(), Some(9));
    } else {
        // A plain directory is removable while in use; nothing needed killing.
        holder.kill().unwrap();
        holder.wait().unwrap();
    }
}

#[test]
fn catch_unwind_around_a_scratch_unmounts() {
    let seen = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let scratch = Scratch::reflink(GIB).unwrap();
        std::fs::write(scratch.path().join("file"), b"data").unwrap();
        *seen.lock().unwrap() = Some((
            scratch.path().to_path_buf(),
            scratch.image().map(Path::to_path_buf),
        ));
        panic!("boom");
    });
    assert!(result.is_err());
    let (mountpoint, image) = seen.lock().unwrap().take().unwrap();
    assert_cleaned_up(&mountpoint, image.as_deref());
}

/// A stand-in for `ramify-storage` that only answers /healthz, so the harness can be
/// tested without the real node.
const FAKE_NODE: &str = r#"#!/usr/bin/python3
import http.server, sys
args = sys.argv[1:]
host, port = args[args.index("--listen") + 1].rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")
print("fake storage node on", port, "data", args[args.index("--data-dir") + 1], flush=True)
http.server.HTTPServer((host, int(port)), H).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn storage_node_process_lifecycle() {
    if !Path::new("/usr/bin/python3").exists() {
        eprintln!("skipping: /usr/bin/python3 is needed for the fake storage node");
        return;
    }
    let scratch = Scratch::plain().unwrap();
    let bin = scratch.path().join("fake-storage");
    std::fs::write(&bin, FAKE_NODE).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = scratch.path().join("data");

    let mut node = StorageNodeProcess::start(&bin, &data, &["--extra", "x"])
        .await
        .unwrap();
    assert!(data.is_dir());
    let health = reqwest::get(format!("{}/healthz", node.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        node.log_tail().contains("fake storage node on"),
        "{}",
        node.log_tail()
    );

    node.kill9().unwrap();
    assert!(reqwest::get(format!("{}/healthz", node.url()))
        .await
        .is_err());
    node.restart().await.unwrap();
    assert_eq!(
        reqwest::get(format!("{}/healthz", node.url()))
            .await
            .unwrap()
            .status(),
        200
    );
    let pid = node.pid().unwrap();
    drop(node);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty(), "storage node survived drop: {stat}");

    // A node that dies at once is reported with its log.
    let err = StorageNodeProcess::start(Path::new("/bin/false"), &data, &[])
        .await
        .unwrap_err();
    assert!(matches!(err, StorageNodeError::Exited { .. }), "{err}");
}
