//! `PUT /v1/timelines/{id}/credentials`: the branch's role and database on a real compute,
//! set over its Unix socket; a fork's inherited password replaced.

mod common;

use common::Env;
use ramify_api::{At, CreateTimeline, Credentials};

fn creds(password: &str) -> Credentials {
    Credentials {
        user: "app".into(),
        password: password.into(),
        database: "appdb".into(),
        disable_other_logins: false,
        adopt_objects: false,
    }
}

async fn login(port: u16, password: &str) -> Result<String, tokio_postgres::Error> {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app dbname=appdb password={password}"),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(conn);
    let row = c
        .query_one(
            "SELECT current_user::text || '@' || current_database()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_create_the_role_and_replace_a_forks_password() {
    let env = Env::new(1 << 30, &[]).await;
    let (root, mut compute) = env.root().await;
    let first = "FirstPassword0123456789abcdef";
    env.client
        .set_credentials(root.id, &creds(first))
        .await
        .unwrap();
    // Idempotent: a retried reconcile sets the same thing again.
    env.client
        .set_credentials(root.id, &creds(first))
        .await
        .unwrap();
    assert_eq!(login(compute.port(), first).await.unwrap(), "app@appdb");
    assert!(login(compute.port(), "WrongPassword0123456789")
        .await
        .is_err());

    let fork = env.fork(root.id, At::Latest).await;
    let child = env.start(&fork).await;
    let second = "SecondPassword0123456789abcd";
    env.client
        .set_credentials(fork.id, &creds(second))
        .await
        .unwrap();
    assert_eq!(login(child.port(), second).await.unwrap(), "app@appdb");
    assert!(
        login(child.port(), first).await.is_err(),
        "the parent's password must not open the fork"
    );
    assert_eq!(login(compute.port(), first).await.unwrap(), "app@appdb");

    let bad = env
        .client
        .set_credentials(
            root.id,
            &Credentials {
                user: "postgres".into(),
                ..creds(first)
            },
        )
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400), "{bad}");
    let bad = env
        .client
        .set_credentials(root.id, &creds("short"))
        .await
        .unwrap_err();
    assert_eq!(bad.status().map(|s| s.as_u16()), Some(400), "{bad}");
    compute.stop().await.unwrap();
    let stopped = env
        .client
        .set_credentials(root.id, &creds(first))
        .await
        .unwrap_err();
    assert_eq!(stopped.status().map(|s| s.as_u16()), Some(409), "{stopped}");
    assert!(
        stopped.to_string().contains("no running compute"),
        "{stopped}"
    );
}

/// Connects as the branch role.
async fn app_client(port: u16, password: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=app dbname=appdb password={password}"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("login as the branch role");
    tokio::spawn(conn);
    c
}

/// Whether a Postgres error message is a privilege refusal.
fn denied(e: &str) -> bool {
    [
        "permission denied",
        "must be superuser",
        "must have admin option",
    ]
    .iter()
    .any(|m| e.contains(m))
}

/// The SQL error of `sql` run as the branch role; panics if it succeeds.
async fn refused(c: &tokio_postgres::Client, sql: &str) -> String {
    match c.batch_execute(sql).await {
        Ok(()) => panic!("the branch role could run {sql:?}"),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// The attacks of issue "safe to share" as the branch role, on a real compute: no path to
/// the OS (programs, server files), to other roles' privileges or to ALTER SYSTEM — and
/// what a developer needs on their own database still works. A role made before these
/// rules (CREATEROLE, an OS role granted through another role) is disarmed by the next
/// credentials call, e.g. a fork's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_role_reaches_neither_the_os_nor_superuser() {
    let env = Env::new(1 << 30, &["--restore-window", "1h"]).await;
    let (root, compute) = env.root().await;
    let marker = std::path::Path::new(&root.pgdata).join("../run/pwned");
    // A role as earlier releases made it, and what a tenant could do with CREATEROLE.
    compute
        .execute(
            "CREATE ROLE app LOGIN CREATEDB CREATEROLE PASSWORD 'x'; \
             CREATE ROLE sneaky NOLOGIN; GRANT pg_execute_server_program TO sneaky; \
             GRANT sneaky TO app; GRANT pg_read_server_files TO app",
        )
        .await
        .unwrap();
    let pw = "BranchPassword0123456789abcdef";
    env.client
        .set_credentials(root.id, &creds(pw))
        .await
        .unwrap();
    let app = app_client(compute.port(), pw).await;

    let e = refused(&app, "GRANT pg_execute_server_program TO current_user").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "GRANT pg_read_server_files TO current_user").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "GRANT pg_write_server_files TO current_user").await;
    assert!(denied(&e), "{e}");
    let copy = format!("COPY (SELECT 1) TO PROGRAM 'id > {}'", marker.display());
    let e = refused(&app, &copy).await;
    assert!(denied(&e), "{e}");
    assert!(!marker.exists(), "COPY TO PROGRAM ran");
    let e = refused(
        &app,
        "CREATE TEMP TABLE f (l text); COPY f FROM '/etc/hostname'",
    )
    .await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "SELECT pg_read_file('/etc/hostname')").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "ALTER SYSTEM SET work_mem = '1GB'").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "CREATE ROLE other LOGIN").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "ALTER ROLE app SUPERUSER").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "SET ROLE sneaky; COPY (SELECT 1) TO PROGRAM 'true'").await;
    assert!(denied(&e), "{e}");
    let e = refused(&app, "CREATE EXTENSION file_fdw").await;
    assert!(denied(&e) || e.contains("superuser"), "{e}");

    // What the owner of a development database needs.
    for sql in [
        "RESET ROLE",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)",
        "CREATE EXTENSION pgcrypto",
        "SELECT gen_random_uuid()",
        "CREATE DATABASE scratch",
        "DROP DATABASE scratch",
        "SELECT count(*) FROM pg_stat_activity WHERE query IS NOT NULL",
        "SELECT * FROM pg_stat_user_tables",
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE false",
    ] {
        app.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("the branch role cannot {sql:?}: {e}"));
    }
    let attrs = compute
        .query_i64(
            "SELECT count(*) FROM pg_roles WHERE NOT rolsuper \
             AND (rolcreaterole OR rolreplication OR rolbypassrls)",
        )
        .await
        .unwrap();
    assert_eq!(
        attrs, 0,
        "a non-superuser role kept CREATEROLE/REPLICATION/BYPASSRLS"
    );
    let os_members = compute
        .query_i64(
            "SELECT count(*) FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid \
             WHERE g.rolname IN ('pg_execute_server_program', 'pg_read_server_files', \
             'pg_write_server_files')",
        )
        .await
        .unwrap();
    assert_eq!(
        os_members, 0,
        "a role still holds an OS-reaching predefined role"
    );
    // The stored password is a SCRAM verifier, never the password.
    let scram = compute
        .query_i64(
            "SELECT count(*) FROM pg_authid WHERE rolname = 'app' \
             AND rolpassword LIKE 'SCRAM-SHA-256$4096:%'",
        )
        .await
        .unwrap();
    assert_eq!(scram, 1);
}

/// Every file of a timeline's run directory (the server log is there), as text.
fn run_dir_text(tl: &ramify_api::TimelineInfo) -> String {
    let mut log = String::new();
    for entry in std::fs::read_dir(&tl.run_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            log.push_str(&String::from_utf8_lossy(
                &std::fs::read(&path).unwrap_or_default(),
            ));
        }
    }
    log
}

/// With every statement logged (and every failing statement too), creating, resetting and
/// restoring credentials — a restore is a fork whose credentials are set anew — leaves
/// no password in any server log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_server_log() {
    let env = Env::new(1 << 30, &[]).await;
    let tl = env
        .client
        .create_timeline(&CreateTimeline::default())
        .await
        .unwrap()
        .value;
    let logged = [
        ("log_statement", "all"),
        ("log_min_error_statement", "debug5"),
    ];
    let compute = env.start_with(&tl, &logged).await;
    let created = "LoggedNowhere0123456789abcdef";
    let reset = "AlsoLoggedNowhere0123456789ab";
    let restored = "RestoredLoggedNowhere01234567";
    env.client
        .set_credentials(tl.id, &creds(created))
        .await
        .unwrap();
    env.client
        .set_credentials(tl.id, &creds(reset))
        .await
        .unwrap();
    assert_eq!(login(compute.port(), reset).await.unwrap(), "app@appdb");
    let fork = env.fork(tl.id, At::Latest).await;
    let child = env.start_with(&fork, &logged).await;
    env.client
        .set_credentials(fork.id, &creds(restored))
        .await
        .unwrap();
    assert_eq!(login(child.port(), restored).await.unwrap(), "app@appdb");
    // The logs show statements at all (log_statement = all is in effect)...
    for (c, t) in [(&compute, &tl), (&child, &fork)] {
        c.execute("SELECT 'statement-logging-works'").await.unwrap();
        let log = run_dir_text(t);
        assert!(
            log.contains("statement-logging-works"),
            "no statement log in {}",
            t.run_dir
        );
        // ...and never a password.
        for pw in [created, reset, restored] {
            assert!(!log.contains(pw), "password in the server log of {}", t.id);
        }
    }
}

/// A fork for another tenant: every other login its parent had (and whose password the
/// parent's tenant knows) is disabled; the branch role logs in with its new password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_for_another_tenant_disables_the_parents_other_logins() {
    let env = Env::new(1 << 30, &[]).await;
    let (root, compute) = env.root().await;
    let first = "ParentPassword0123456789abcdef";
    env.client
        .set_credentials(root.id, &creds(first))
        .await
        .unwrap();
    compute
        .execute("CREATE ROLE reporting LOGIN PASSWORD 'ReportingPassword0123456789'")
        .await
        .unwrap();
    let fork = env.fork(root.id, At::Latest).await;
    let child = env.start(&fork).await;
    let second = "ChildPassword0123456789abcdefg";
    env.client
        .set_credentials(
            fork.id,
            &Credentials {
                disable_other_logins: true,
                ..creds(second)
            },
        )
        .await
        .unwrap();
    assert_eq!(login(child.port(), second).await.unwrap(), "app@appdb");
    let other = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=reporting dbname=appdb password=ReportingPassword0123456789",
            child.port()
        ),
        tokio_postgres::NoTls,
    )
    .await;
    let err = other
        .err()
        .expect("the parent's other login opened the fork");
    let msg = err
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| err.to_string());
    assert!(msg.contains("not permitted to log in"), "{msg}");
    // The parent keeps its logins.
    let parent_other = compute
        .query_i64("SELECT count(*) FROM pg_roles WHERE rolname = 'reporting' AND rolcanlogin")
        .await
        .unwrap();
    assert_eq!(parent_other, 1);
}
