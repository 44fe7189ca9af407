//! `PUT /v1/timelines/{id}/credentials`: the branch's role and database on a real compute,
//! set over its Unix socket; a fork's inherited password replaced.

mod common;

use common::Env;
use ramify_api::{CreateTimeline, Credentials};

fn creds(password: &str) -> Credentials {
    Credentials {
        user: "app".into(),
        password: password.into(),
        database: "appdb".into(),
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

    let fork = env
        .client
        .create_timeline(&CreateTimeline {
            parent: Some(root.id),
            ..Default::default()
        })
        .await
        .unwrap()
        .value;
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
