//! The objects `branch create` and `branch restore` write, built from the command line.

use anyhow::bail;
use ramify_api::At;
use ramify_crd::{
    BackupSpec, BranchPoint, BranchSource, ComputeSpec, DatabaseBranch, DatabaseBranchSpec,
    ExternalSource, ParentRef, RestoreSource, SecretKeyRef,
};
use ramify_lifecycle::HistoryPoint;

use crate::args::{CreateArgs, RestoreArgs};

/// `parent` or `namespace/parent` of `--parent`.
pub fn parent_ref(parent: &str) -> ParentRef {
    match parent.split_once('/') {
        Some((ns, name)) => ParentRef {
            name: name.to_string(),
            namespace: Some(ns.to_string()),
        },
        None => ParentRef {
            name: parent.to_string(),
            namespace: None,
        },
    }
}

/// A Go-style duration of whole seconds (`300s`), as `spec.ttl` and `suspendAfter` take.
pub fn go_duration(secs: u64) -> String {
    format!("{secs}s")
}

/// The key of a follower's source Secret that holds the URI.
pub const SOURCE_KEY: &str = "uri";

/// The Secret `branch create NAME --follow URI` writes the source's URI into (with its
/// password), which the branch's `spec.source.external` names.
pub fn source_secret_name(branch: &str) -> String {
    format!("{branch}-source")
}

/// The DatabaseBranch `branch create` writes (the point already resolved).
pub fn branch_object(
    args: &CreateArgs,
    namespace: &str,
    at: Option<BranchPoint>,
) -> DatabaseBranch {
    let mut b = DatabaseBranch::new(
        &args.name,
        DatabaseBranchSpec {
            parent: args.parent.as_deref().map(parent_ref),
            at,
            compute: args.suspend_after.map(|s| ComputeSpec {
                suspend_after: Some(go_duration(s)),
                ..ComputeSpec::default()
            }),
            protected: args.protected.then_some(true),
            expires_at: args.expires_at,
            ttl: args.expires_in.map(go_duration),
            backup: args.backup.then_some(BackupSpec {
                enabled: Some(true),
            }),
            storage_node: args.storage_node.clone(),
            source: args.follow.as_ref().map(|_| BranchSource {
                external: Some(ExternalSource {
                    connection_secret_ref: SecretKeyRef {
                        name: source_secret_name(&args.name),
                        key: SOURCE_KEY.to_string(),
                    },
                    mode: Some(args.mode.into()),
                    slot: args.slot.clone(),
                    publication: args.publication.clone(),
                }),
            }),
            ..DatabaseBranchSpec::default()
        },
    );
    b.metadata.namespace = Some(namespace.to_string());
    // `new` copies the CRD's own annotations (helm.sh/resource-policy): not the object's.
    b.metadata.annotations = None;
    b
}

/// The source of `branch restore` on a cluster.
pub fn restore_source(args: &RestoreArgs) -> anyhow::Result<RestoreSource> {
    let mut s = RestoreSource {
        branch: args.from.clone(),
        ..RestoreSource::default()
    };
    match &args.at {
        None | Some(HistoryPoint::At(At::Latest)) => {
            if args.from.is_none() {
                bail!("restore needs --at WHEN (or --from BRANCH): like --at -10m or --at checkpoint:NAME");
            }
        }
        Some(HistoryPoint::At(At::Lsn(l))) => s.lsn = Some(l.to_string()),
        Some(HistoryPoint::At(At::Time(t))) => {
            s.time = Some(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
        Some(HistoryPoint::Checkpoint(c)) => s.checkpoint = Some(c.clone()),
        Some(HistoryPoint::At(At::Snapshot(_))) => bail!(
            "restoring to a snapshot is not available against a cluster (BranchRestore takes lsn, time or checkpoint): use --at checkpoint:NAME or an LSN"
        ),
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{BranchCommand, Cli, Command};
    use clap::Parser;
    use serde_json::json;

    fn create_args(args: &[&str]) -> CreateArgs {
        let cli =
            Cli::try_parse_from(["kubectl-ramify", "branch", "create"].iter().chain(args)).unwrap();
        match cli.command {
            Command::Branch(BranchCommand::Create(c)) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn branch_objects_carry_every_flag() {
        let args = create_args(&[
            "dev",
            "--parent",
            "prod/main",
            "--suspend-after",
            "0",
            "--expires-in",
            "2h",
            "--backup",
            "--storage-node",
            "ramify-storage-1",
        ]);
        let b = branch_object(&args, "team-a", None);
        assert_eq!(
            serde_json::to_value(&b).unwrap(),
            json!({
                "apiVersion": "ramify.dev/v1alpha1", "kind": "DatabaseBranch",
                "metadata": {"name": "dev", "namespace": "team-a"},
                "spec": {"parent": {"name": "main", "namespace": "prod"}, "compute": {"suspendAfter": "0s"}, "ttl": "7200s", "backup": {"enabled": true}, "storageNode": "ramify-storage-1"}
            })
        );
        let root = branch_object(&create_args(&["main", "--protected"]), "prod", None);
        assert_eq!(
            serde_json::to_value(&root.spec).unwrap(),
            json!({"protected": true})
        );
        // A follower names the Secret `branch create` writes its URI into.
        let follower = branch_object(
            &create_args(&[
                "mirror",
                "--follow",
                "postgresql://replicator:pw@db.prod.svc/bank",
                "--mode",
                "logical",
                "--publication",
                "bank",
                "--slot",
                "mirror_slot",
            ]),
            "prod",
            None,
        );
        assert_eq!(
            serde_json::to_value(&follower.spec).unwrap(),
            json!({"source": {"external": {
                "connectionSecretRef": {"name": "mirror-source", "key": "uri"},
                "mode": "logical", "slot": "mirror_slot", "publication": "bank"
            }}})
        );
        let physical = branch_object(
            &create_args(&["mirror", "--follow", "postgresql://r@db/bank"]),
            "prod",
            None,
        );
        assert_eq!(
            serde_json::to_value(&physical.spec).unwrap(),
            json!({"source": {"external": {
                "connectionSecretRef": {"name": "mirror-source", "key": "uri"},
                "mode": "physical"
            }}})
        );
    }

    #[test]
    fn restore_sources() {
        let args = |a: &[&str]| -> RestoreArgs {
            let cli = Cli::try_parse_from(["kubectl-ramify", "branch", "restore"].iter().chain(a))
                .unwrap();
            match cli.command {
                Command::Branch(BranchCommand::Restore(r)) => r,
                other => panic!("{other:?}"),
            }
        };
        let s = restore_source(&args(&["dev", "--at", "checkpoint:step-3"])).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"checkpoint": "step-3"})
        );
        let s = restore_source(&args(&["dev", "--from", "main", "--at", "0/16B3748"])).unwrap();
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            json!({"branch": "main", "lsn": "0/16B3748"})
        );
        let e = restore_source(&args(&["dev", "--at", "snapshot:x"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not available against a cluster"), "{e}");
        assert!(restore_source(&args(&["dev"])).is_err());
    }
}
