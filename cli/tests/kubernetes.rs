//! `ramify` / `kubectl-ramify` against a real kube-apiserver + etcd (no operator: the test
//! plays it, setting status the way the operator does). Proves: create --wait returns
//! once the branch is Ready and prints its progress; list -A draws one tree across
//! namespaces; delete --wait waits until the branch is gone; wake waits for the operator;
//! a branch stuck not Ready shows its conditions and Warning events; RBAC denial, a
//! missing CRD, an unknown branch or namespace are one line, a non-zero exit, and
//! nothing written.
//!
//! Needs `etcd` and `kube-apiserver` (`make cluster-build`); without them the tests say so
//! and pass, unless `RAMIFY_REQUIRE_K8S=1`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use ramify_crd::{DatabaseBranch, WAKE_REQUEST_ANNOTATION};
use ramify_testkit::{kube_env, ApiServer};
use serde_json::json;

async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    kube_env::eventually(what, Duration::from_secs(30), f).await
}

/// The operator's part, as far as the CLI can see it: a finalizer, phase Creating and then
/// Ready with the connection Secret; `broken` stays Creating with a Warning event; a wake
/// request starts the compute and is removed; a deleted branch goes after a second.
fn play_operator(client: Client) {
    tokio::spawn(async move {
        let all: Api<DatabaseBranch> = Api::all(client.clone());
        loop {
            for b in all
                .list(&ListParams::default())
                .await
                .map(|l| l.items)
                .unwrap_or_default()
            {
                let _ = step(&client, &b).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

fn cond(t: &str, ok: bool, reason: &str, message: &str) -> serde_json::Value {
    json!({"type": t, "status": if ok {"True"} else {"False"}, "reason": reason, "message": message, "lastTransitionTime": Utc::now()})
}

async fn step(client: &Client, b: &DatabaseBranch) -> Result<(), kube::Error> {
    let ns = b.namespace().unwrap();
    let name = b.name_any();
    let api: Api<DatabaseBranch> = Api::namespaced(client.clone(), &ns);
    let pp = PatchParams::default();
    if let Some(t) = &b.metadata.deletion_timestamp {
        let since = Utc::now().timestamp() - t.0.as_second();
        if since >= 1 {
            api.patch(
                &name,
                &pp,
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await?;
        }
        return Ok(());
    }
    if b.finalizers().is_empty() {
        api.patch(
            &name,
            &pp,
            &Patch::Merge(json!({"metadata": {"finalizers": ["ramify.dev/test"]}})),
        )
        .await?;
    }
    let phase = b.status.as_ref().and_then(|s| s.phase);
    let age = Utc::now().timestamp() - b.creation_timestamp().unwrap().0.as_second();
    if phase.is_none() || (name == "broken" && age >= 1) {
        let mut reason = ("Creating", "forking the storage timeline");
        if name == "broken" && age >= 1 {
            reason = ("StorageError", "storage node ramify-storage-0: disk full");
            let ev: Event = serde_json::from_value(json!({
                "metadata": {"name": "broken.1", "namespace": ns},
                "involvedObject": {"kind": "DatabaseBranch", "name": name, "namespace": ns, "apiVersion": "ramify.dev/v1alpha1"},
                "reason": "StorageError", "message": "creating the timeline: disk full", "type": "Warning",
                "lastTimestamp": Utc::now(), "firstTimestamp": Utc::now(),
                "source": {"component": "ramify-operator"}
            }))
            .unwrap();
            let _ = Api::<Event>::namespaced(client.clone(), &ns)
                .create(&PostParams::default(), &ev)
                .await;
        }
        let status = json!({"status": {"phase": "Creating", "conditions": [
            cond("Ready", false, reason.0, reason.1),
            cond("StorageReady", false, reason.0, reason.1),
        ]}});
        api.patch_status(&name, &pp, &Patch::Merge(status)).await?;
        return Ok(());
    }
    if name != "broken" && phase == Some(ramify_crd::Phase::Creating) && age >= 2 {
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-postgres"), "namespace": ns},
            "stringData": {"host": format!("{name}-postgres.{ns}.svc.cluster.local"), "port": "5432",
                "database": "app", "user": "app", "password": "pw",
                "uri": format!("postgresql://app:pw@{name}-postgres.{ns}.svc.cluster.local:5432/app")}
        }))
        .unwrap();
        let _ = Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &secret)
            .await;
        let status = json!({"status": {"phase": "Ready",
            "conditions": [cond("Ready", true, "Ready", ""), cond("StorageReady", true, "Forked", ""), cond("ComputeReady", true, "Suspended", "")],
            "forkLsn": b.spec.parent.as_ref().map(|_| "0/16B3748"),
            "connection": {"host": format!("{name}-postgres.{ns}.svc.cluster.local"), "port": 5432, "database": "app", "user": "app", "secretName": format!("{name}-postgres")},
            "compute": {"state": "Suspended"}, "proxyPort": 20001, "exclusiveBytes": 16384, "logicalBytes": 40960}});
        api.patch_status(&name, &pp, &Patch::Merge(status)).await?;
        return Ok(());
    }
    if b.annotations().contains_key(WAKE_REQUEST_ANNOTATION) {
        api.patch_status(
            &name,
            &pp,
            &Patch::Merge(json!({"status": {"compute": {"state": "Running", "pod": "compute-1"}}})),
        )
        .await?;
        api.patch(
            &name,
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {WAKE_REQUEST_ANNOTATION: null}}})),
        )
        .await?;
    }
    Ok(())
}

/// The CLI binary under `name` (a symlink for `kubectl-ramify`).
fn binary(dir: &Path, name: &str) -> PathBuf {
    let real = PathBuf::from(env!("CARGO_BIN_EXE_ramify"));
    if name == "ramify" {
        return real;
    }
    let link = dir.join(name);
    if !link.exists() {
        std::os::unix::fs::symlink(&real, &link).unwrap();
    }
    link
}

/// A real API server (with Ramify's CRDs when `crds`), the namespaces `namespaces`, and a
/// kubeconfig whose context's namespace is the first of them, beside the plugin's name.
struct Cluster {
    server: ApiServer,
    client: Client,
    dir: tempfile::TempDir,
    kc: PathBuf,
    plugin: PathBuf,
}

async fn cluster(crds: bool, namespaces: &[&str]) -> Cluster {
    let server = ApiServer::start().unwrap();
    let client = server.client().await;
    if crds {
        kube_env::install_crds(&client).await;
    }
    for ns in namespaces {
        kube_env::create_namespace(&client, ns, &[]).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        server.kubeconfig(&server.token, namespaces.first().copied()),
    )
    .unwrap();
    let plugin = binary(dir.path(), "kubectl-ramify");
    Cluster {
        server,
        client,
        dir,
        kc,
        plugin,
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cli(program: &Path, kubeconfig: &Path, args: &[&str]) -> Out {
    let out = tokio::process::Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("RAMIFY_NAMESPACE")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One line on stderr, `error: …`, and a failure status.
fn one_line_error(o: &Out) -> &str {
    assert_ne!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    o.stderr.trim_end()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn branch_verbs_against_a_real_api_server() {
    if kube_env::skip_without_api_server("branch_verbs_against_a_real_api_server") {
        return;
    }
    let Cluster {
        server,
        client,
        dir,
        kc,
        plugin,
    } = cluster(true, &["team-a", "team-b", "prod"]).await;
    play_operator(client.clone());
    let ramify = binary(dir.path(), "ramify");

    // Acceptance (1): create --wait prints progress and returns when Ready.
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "main",
            "-n",
            "prod",
            "--wait",
            "--timeout",
            "30s",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .starts_with("created empty root branch main in namespace prod; Ready after"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains(
            "  uri:        postgresql://app:pw@main-postgres.prod.svc.cluster.local:5432/app\n"
        ),
        "{}",
        o.stdout
    );
    assert!(
        o.stderr
            .lines()
            .all(|l| l.starts_with("waiting: prod/main: "))
            && !o.stderr.is_empty(),
        "{}",
        o.stderr
    );
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "dev",
            "--parent",
            "prod/main",
            "-n",
            "team-a",
            "--wait",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(
        o.stdout
            .starts_with("created branch dev from prod/main in namespace team-a; Ready after"),
        "{}",
        o.stdout
    );
    // `ramify --kubeconfig` is the same backend; the context's namespace is the default.
    let o = cli(
        &ramify,
        &kc,
        &[
            "--kubeconfig",
            kc.to_str().unwrap(),
            "branch",
            "create",
            "dev-fix",
            "--parent",
            "dev",
            "--wait",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "pr-7",
            "--parent",
            "prod/main",
            "-n",
            "team-b",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.contains("--wait"), "{}", o.stdout);

    // Acceptance (2): one tree across namespaces.
    let branches: Api<DatabaseBranch> = Api::all(client.clone());
    eventually("pr-7 Ready", || async {
        let b = Api::<DatabaseBranch>::namespaced(client.clone(), "team-b")
            .get("pr-7")
            .await
            .ok()?;
        (b.status?.phase? == ramify_crd::Phase::Ready).then_some(())
    })
    .await;
    let o = cli(&plugin, &kc, &["branch", "list", "-A"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<String> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        lines,
        [
            "NAMESPACE NAME STATE FORK",
            "prod main suspended -",
            "team-a ├─ dev suspended",
            "team-a │ └─ dev-fix",
            "team-b └─ pr-7 suspended",
        ],
        "{}",
        o.stdout
    );
    // Without -A: the namespace's branches, no NAMESPACE column, dev a root here.
    let o = cli(&plugin, &kc, &["branch", "list", "-n", "team-a"]).await;
    assert!(o.stdout.starts_with("NAME "), "{}", o.stdout);
    assert!(
        o.stdout.contains("\ndev ") && o.stdout.contains("└─ dev-fix"),
        "{}",
        o.stdout
    );
    // -o json: the objects, like kubectl.
    let o = cli(&plugin, &kc, &["branch", "list", "-A", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["kind"], "List");
    assert_eq!(v["items"].as_array().unwrap().len(), 4);
    assert_eq!(v["items"][0]["kind"], "DatabaseBranch");

    let o = cli(&plugin, &kc, &["branch", "get", "dev"]).await;
    assert!(
        o.stdout
            .starts_with("team-a/dev\n  parent:      prod/main\n  phase:       Ready"),
        "{}",
        o.stdout
    );
    let o = cli(&plugin, &kc, &["branch", "connect", "dev"]).await;
    assert_eq!(
        o.stdout,
        "postgresql://app:pw@dev-postgres.team-a.svc.cluster.local:5432/app\n"
    );

    // Wake waits until the operator has done it.
    let o = cli(&plugin, &kc, &["branch", "wake", "dev", "--timeout", "20s"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "branch dev is running (pod compute-1)\n");

    // A branch stuck not Ready: its conditions and last Warning events, non-zero.
    let o = cli(
        &plugin,
        &kc,
        &["branch", "create", "broken", "--wait", "--timeout", "4s"],
    )
    .await;
    let line = o.stderr.lines().last().unwrap_or_default().to_string();
    assert_ne!(o.code, 0);
    assert!(line.starts_with("error: branch is not Ready after 4s: team-a/broken: creating; Ready=False (StorageError: storage node ramify-storage-0: disk full)"), "{line}");
    assert!(
        line.contains("last Warning events: StorageError: creating the timeline: disk full"),
        "{line}"
    );

    // Acceptance (4): bad input is one line, non-zero, nothing written.
    let before = branches
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .len();
    let o = cli(&plugin, &kc, &["branch", "get", "nope"]).await;
    assert_eq!(
        one_line_error(&o),
        "error: branch \"nope\" not found in namespace \"team-a\""
    );
    let o = cli(
        &plugin,
        &kc,
        &["branch", "create", "x", "--parent", "nope", "--wait"],
    )
    .await;
    assert_eq!(
        one_line_error(&o),
        "error: parent branch \"nope\" not found in namespace \"team-a\""
    );
    let o = cli(&plugin, &kc, &["branch", "create", "x", "-n", "no-such-ns"]).await;
    assert_eq!(
        one_line_error(&o),
        "error: namespace \"no-such-ns\" not found"
    );
    let o = cli(&plugin, &kc, &["branch", "list", "-n", "no-such-ns"]).await;
    assert_eq!(
        one_line_error(&o),
        "error: namespace \"no-such-ns\" not found"
    );
    let o = cli(&plugin, &kc, &["branch", "delete", "main", "-n", "prod"]).await;
    assert!(
        one_line_error(&o).contains("has child branches ("),
        "{}",
        o.stderr
    );
    let o = cli(&plugin, &kc, &["local", "status"]).await;
    assert!(
        one_line_error(&o).contains("is local-mode only"),
        "{}",
        o.stderr
    );
    let o = cli(&ramify, &kc, &["branch", "list", "-n", "team-a"]).await;
    assert!(one_line_error(&o).contains("add --kube"), "{}", o.stderr);
    let bob = dir.path().join("bob");
    std::fs::write(
        &bob,
        server.kubeconfig(&server.unprivileged_token, Some("team-a")),
    )
    .unwrap();
    let o = cli(
        &plugin,
        &bob,
        &[
            "branch", "create", "y", "--parent", "main", "-n", "team-a", "--wait",
        ],
    )
    .await;
    assert_eq!(
        one_line_error(&o),
        format!("error: forbidden: user \"{}\" cannot create databasebranches.ramify.dev in namespace \"team-a\" (RBAC)", ApiServer::UNPRIVILEGED_USER)
    );
    let o = cli(&plugin, &bob, &["branch", "list", "-A"]).await;
    assert!(
        one_line_error(&o).contains(
            "cannot list databasebranches.ramify.dev at the cluster scope (all namespaces) (RBAC)"
        ),
        "{}",
        o.stderr
    );
    assert_eq!(
        branches
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        before
    );

    // delete --wait returns once the branch is gone (the operator's finalizer released).
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "delete",
            "pr-7",
            "-n",
            "team-b",
            "--wait",
            "--timeout",
            "20s",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "deleted branch pr-7 in namespace team-b\n");
    assert!(Api::<DatabaseBranch>::namespaced(client.clone(), "team-b")
        .get_opt("pr-7")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_crds_the_cli_says_the_operator_is_not_installed() {
    if kube_env::skip_without_api_server(
        "without_the_crds_the_cli_says_the_operator_is_not_installed",
    ) {
        return;
    }
    let Cluster {
        server: _server,
        dir: _dir,
        kc,
        plugin,
        ..
    } = cluster(false, &["team-a"]).await;
    for args in [
        &["branch", "list"][..],
        &["branch", "create", "main", "--wait"],
        &["branch", "list", "-A"],
    ] {
        let o = cli(&plugin, &kc, args).await;
        let line = one_line_error(&o);
        assert!(
            line.starts_with("error: the Ramify operator is not installed in this cluster"),
            "{args:?}: {line}"
        );
        assert!(line.contains("helm install ramify-crds"), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_created_by_the_cli_owns_a_source_secret_holding_its_password() {
    if kube_env::skip_without_api_server(
        "a_follower_created_by_the_cli_owns_a_source_secret_holding_its_password",
    ) {
        return;
    }
    let Cluster {
        server: _server,
        client,
        dir,
        kc,
        plugin,
    } = cluster(true, &["prod"]).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "prod");
    let branches: Api<DatabaseBranch> = Api::namespaced(client.clone(), "prod");
    let uri_of = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get("uri"))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
    };

    // The password from --password-file goes into mirror-source, owned by the branch,
    // and is printed nowhere.
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "s3cret@x:y\n").unwrap();
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "mirror",
            "--follow",
            "postgresql://replicator@db.prod.svc:5432/bank",
            "--password-file",
            pass.to_str().unwrap(),
            "--mode",
            "logical",
            "--publication",
            "bank",
        ],
    )
    .await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    assert!(!format!("{}{}", o.stdout, o.stderr).contains("s3cret"));
    let b = branches.get("mirror").await.unwrap();
    let ext = b.spec.source.clone().and_then(|s| s.external).unwrap();
    assert_eq!(ext.connection_secret_ref.name, "mirror-source");
    assert_eq!(ext.publication.as_deref(), Some("bank"));
    let s = secrets.get("mirror-source").await.unwrap();
    assert_eq!(
        uri_of(&s).as_deref(),
        Some("postgresql://replicator:s3cret%40x%3Ay@db.prod.svc:5432/bank")
    );
    let owner = &s.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), Some(&owner.uid)),
        ("DatabaseBranch", "mirror", b.metadata.uid.as_ref())
    );

    // An existing Secret of that name is never overwritten, and no branch is made.
    let mut theirs = Secret::default();
    theirs.metadata.name = Some("mirror2-source".into());
    theirs.string_data = Some([("uri".to_string(), "theirs".to_string())].into());
    secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "mirror2",
            "--follow",
            "postgresql://replicator:pw@db.prod.svc/bank",
        ],
    )
    .await;
    let line = one_line_error(&o);
    assert!(
        line.contains("Secret mirror2-source already exists") && line.contains("never overwritten"),
        "{line}"
    );
    assert_eq!(
        uri_of(&secrets.get("mirror2-source").await.unwrap()).as_deref(),
        Some("theirs")
    );
    assert!(branches.get_opt("mirror2").await.unwrap().is_none());

    // A branch that cannot be made (its name is taken) leaves no password behind.
    let o = cli(&plugin, &kc, &["branch", "create", "taken"]).await;
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let o = cli(
        &plugin,
        &kc,
        &[
            "branch",
            "create",
            "taken",
            "--follow",
            "postgresql://replicator:other@db.prod.svc/bank",
        ],
    )
    .await;
    assert!(
        one_line_error(&o).contains("already exists"),
        "{}",
        o.stderr
    );
    assert!(
        secrets.get_opt("taken-source").await.unwrap().is_none(),
        "the Secret of a branch that was not made is deleted"
    );
    assert!(branches.get("taken").await.unwrap().spec.source.is_none());
}
