//! Checks of a branch's spec that the API server's schema cannot do, without I/O: each
//! failure is a [`Problem`] the user must fix, shown as the `Ready` condition's reason
//! and message.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use ramify_api::names::validate_sql_identifier;
use ramify_api::{At, Lsn};
use ramify_crd::{BranchPoint, DatabaseBranch};

use crate::build::postgres_args;
use crate::config::Config;

/// A spec the operator cannot satisfy until the user changes something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Ready` condition reason (CamelCase).
    pub reason: &'static str,
    /// What is wrong and what is valid.
    pub message: String,
}

impl Problem {
    fn invalid(message: impl Into<String>) -> Problem {
        Problem {
            reason: "InvalidSpec",
            message: message.into(),
        }
    }
}

/// The spec, checked and with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    /// Fork point (forks only).
    pub at: Option<At>,
    pub user: String,
    /// `spec.connection.database`, or `app`. A following branch and the forks descending
    /// from one default to their source's database instead (see `database_given`).
    pub database: String,
    /// Whether `spec.connection.database` is set.
    pub database_given: bool,
    /// `spec.source.external` is set: a read-only follower of an external Postgres.
    pub following: bool,
    /// A physical follower: its logins are its source's roles, so Ramify sets no
    /// credentials and its Secret names no user. (A logical follower's login is the branch
    /// role, made read-only by the storage node.)
    pub source_logins: bool,
    /// `None`: never suspend.
    pub suspend_after: Option<Duration>,
    pub postgres_parameters: BTreeMap<String, String>,
    pub resources: Option<ResourceRequirements>,
    /// What the branch asks of the storage node's backup repository when its timeline is
    /// made (a restore's or reset's too): `spec.backup.enabled`; a branch created
    /// protected asks for it; `None` leaves it to the node (roots yes, forks no).
    pub backup: Option<bool>,
}

/// Checks everything about the spec that needs no other object.
pub fn validate_spec(b: &DatabaseBranch, cfg: &Config) -> Result<ValidSpec, Problem> {
    let spec = &b.spec;
    let fork = spec.parent.is_some();
    if spec.at.is_some() && !fork {
        return Err(Problem::invalid(
            "spec.at needs spec.parent: a root branch starts empty",
        ));
    }
    if let Some(v) = spec.postgres_version {
        if fork {
            return Err(Problem::invalid(
                "spec.postgresVersion is only for roots: a fork runs its parent's version",
            ));
        }
        if v != cfg.postgres_version {
            return Err(Problem {
                reason: "UnsupportedPostgresVersion",
                message: format!(
                    "spec.postgresVersion {v} is not available: this installation runs Postgres {} (the chart's compute image)",
                    cfg.postgres_version
                ),
            });
        }
    }
    let at = if fork {
        Some(branch_point(spec.at.as_ref())?)
    } else {
        None
    };
    let following = validate_source(b)?;
    let conn = spec.connection.clone().unwrap_or_default();
    let database_given = conn.database.is_some();
    let user = conn.user.unwrap_or_else(|| "app".into());
    let database = conn.database.unwrap_or_else(|| "app".into());
    validate_sql_identifier("spec.connection.user", &user).map_err(Problem::invalid)?;
    if following {
        // An existing database of the source (`postgres` included); nothing is made.
        ramify_api::names::validate_source_database(&database)
            .map_err(|e| Problem::invalid(format!("spec.connection.database: {e}")))?;
    } else {
        validate_sql_identifier("spec.connection.database", &database).map_err(Problem::invalid)?;
    }
    let compute = spec.compute.clone().unwrap_or_default();
    let suspend_after = match &compute.suspend_after {
        Some(s) => ramify_crd::duration::parse(s)
            .map_err(|e| Problem::invalid(format!("spec.compute.suspendAfter: {e}")))?,
        None => cfg.default_suspend_after,
    };
    // A follower must stay connected to its source to keep up: it never suspends.
    let suspend_after = if following {
        Duration::ZERO
    } else {
        suspend_after
    };
    postgres_args("true", &compute.postgres_parameters, None, None)
        .map_err(|e| Problem::invalid(format!("spec.compute.postgresParameters: {e}")))?;
    let resources = bounded_resources(compute.resources, cfg)?;
    Ok(ValidSpec {
        at,
        user,
        database,
        database_given,
        following,
        source_logins: following
            && b.external_source().is_some_and(|e| {
                e.mode.unwrap_or_default() == ramify_crd::ReplicationMode::Physical
            }),
        suspend_after: (!suspend_after.is_zero()).then_some(suspend_after),
        postgres_parameters: compute.postgres_parameters,
        resources,
        backup: match spec.backup.as_ref().and_then(|b| b.enabled) {
            Some(true) if following => {
                return Err(Problem::invalid(
                    "a following branch is not backed up (its source is the original): fork it with spec.backup.enabled",
                ))
            }
            Some(on) => Some(on),
            None if spec.protected == Some(true) && !following => Some(true),
            None => None,
        },
    })
}

/// Whether the branch follows an external Postgres, checking what the CRD's CEL rules
/// check too (an API server without them, or an object stored before they existed).
fn validate_source(b: &DatabaseBranch) -> Result<bool, Problem> {
    let spec = &b.spec;
    let Some(source) = &spec.source else {
        return Ok(false);
    };
    let Some(ext) = &source.external else {
        return Err(Problem::invalid(
            "spec.source needs external: the Postgres to follow",
        ));
    };
    if spec.parent.is_some() {
        return Err(Problem::invalid(
            "spec.source and spec.parent exclude each other: a branch either follows an external Postgres or forks another branch",
        ));
    }
    if spec.postgres_version.is_some() {
        return Err(Problem::invalid(
            "spec.postgresVersion is only for new empty roots: a following branch runs its source's version",
        ));
    }
    if spec.ttl.is_some() || spec.expires_at.is_some() {
        return Err(Problem::invalid(
            "a following branch does not expire (spec.ttl, spec.expiresAt): delete it when you stop following",
        ));
    }
    if spec.connection.as_ref().is_some_and(|c| c.user.is_some())
        && ext.mode.unwrap_or_default() == ramify_crd::ReplicationMode::Physical
    {
        return Err(Problem::invalid(
            "spec.connection.user is not for a physical following branch: its logins are its source's roles",
        ));
    }
    let logical = ext.mode.unwrap_or_default() == ramify_crd::ReplicationMode::Logical;
    if logical != ext.publication.is_some() {
        return Err(Problem::invalid(
            "spec.source.external: mode logical needs publication (the source's publication to subscribe to); physical takes none",
        ));
    }
    Ok(true)
}

/// The branch's compute resources within the installation's maximum per branch: asking
/// more (as a request or a limit) is refused, naming both; a resource with a maximum and
/// no limit gets the maximum as its limit, so no branch runs unbounded.
fn bounded_resources(
    asked: Option<ResourceRequirements>,
    cfg: &Config,
) -> Result<Option<ResourceRequirements>, Problem> {
    let maxima = [
        ("cpu", cfg.max_compute_cpu.as_deref(), "--max-compute-cpu"),
        (
            "memory",
            cfg.max_compute_memory.as_deref(),
            "--max-compute-memory",
        ),
    ];
    if maxima.iter().all(|(_, m, _)| m.is_none()) {
        return Ok(asked);
    }
    let mut r = asked.unwrap_or_default();
    for (resource, max, flag) in maxima {
        let Some(max) = max else { continue };
        let max_value = crate::quantity::parse(max)
            .map_err(|e| Problem::invalid(format!("the operator's {flag}: {e}")))?;
        for (kind, map) in [("requests", &r.requests), ("limits", &r.limits)] {
            let Some(q) = map.as_ref().and_then(|m| m.get(resource)) else {
                continue;
            };
            let field = format!("spec.compute.resources.{kind}.{resource}");
            let value = crate::quantity::parse(&q.0)
                .map_err(|e| Problem::invalid(format!("{field}: {e}")))?;
            if value > max_value {
                return Err(Problem {
                    reason: "ResourceLimitExceeded",
                    message: format!(
                        "{field} {} is more than this installation allows one branch, {max} \
                         (the chart's compute.maxResources.{resource}); ask for at most {max}",
                        q.0
                    ),
                });
            }
        }
        let limits = r.limits.get_or_insert_with(Default::default);
        limits
            .entry(resource.to_owned())
            .or_insert_with(|| Quantity(max.to_owned()));
    }
    Ok(Some(r))
}

/// The storage API's fork point for `spec.at` (absent or empty: latest).
pub fn branch_point(at: Option<&BranchPoint>) -> Result<At, Problem> {
    let Some(at) = at else {
        return Ok(At::Latest);
    };
    let set = [at.lsn.is_some(), at.time.is_some(), at.snapshot.is_some()]
        .iter()
        .filter(|x| **x)
        .count();
    if set > 1 {
        return Err(Problem::invalid(
            "spec.at takes at most one of lsn, time and snapshot",
        ));
    }
    if let Some(l) = &at.lsn {
        let lsn: Lsn = l
            .parse()
            .map_err(|e| Problem::invalid(format!("spec.at.lsn: {e}")))?;
        return Ok(At::Lsn(lsn));
    }
    if let Some(t) = &at.time {
        let t = ramify_api::parse_timestamp(t)
            .map_err(|e| Problem::invalid(format!("spec.at.time: {e}")))?;
        return Ok(At::Time(t));
    }
    if let Some(s) = &at.snapshot {
        ramify_api::names::validate_snapshot_name(s)
            .map_err(|e| Problem::invalid(format!("spec.at.snapshot: {e}")))?;
        return Ok(At::Snapshot(s.clone()));
    }
    Ok(At::Latest)
}

/// Whether `parent` lets a branch in `child_ns` (with these labels) fork it.
pub fn parent_shares(
    parent: &DatabaseBranch,
    child_ns: &str,
    child_ns_labels: &BTreeMap<String, String>,
) -> bool {
    if parent.metadata.namespace.as_deref() == Some(child_ns) {
        return true;
    }
    let Some(sharing) = &parent.spec.sharing else {
        return false;
    };
    sharing.namespaces.iter().any(|n| n == child_ns)
        || sharing
            .namespace_selector
            .as_ref()
            .is_some_and(|s| selector_matches(s, child_ns_labels))
}

/// Label selector semantics of Kubernetes: every `matchLabels` pair and every
/// expression must hold. An empty selector matches everything.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use ramify_crd::{ComputeSpec, DatabaseBranchSpec, ParentRef, SharingSpec};

    fn branch(ns: &str, spec: DatabaseBranchSpec) -> DatabaseBranch {
        let mut b = DatabaseBranch::new("b", spec);
        b.metadata.namespace = Some(ns.into());
        b
    }

    fn fork_spec() -> DatabaseBranchSpec {
        DatabaseBranchSpec {
            parent: Some(ParentRef {
                name: "main".into(),
                namespace: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn compute_resources_are_bounded_by_the_installation() {
        let mut cfg = Config::for_namespace("ramify-system");
        let asked = |requests: &[(&str, &str)], limits: &[(&str, &str)]| {
            let map = |kv: &[(&str, &str)]| {
                (!kv.is_empty()).then(|| {
                    kv.iter()
                        .map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned())))
                        .collect::<BTreeMap<_, _>>()
                })
            };
            let mut spec = fork_spec();
            spec.compute = Some(ComputeSpec {
                resources: Some(ResourceRequirements {
                    requests: map(requests),
                    limits: map(limits),
                    ..Default::default()
                }),
                ..Default::default()
            });
            branch("dev", spec)
        };
        // No maximum: whatever the branch asks.
        let v = validate_spec(&asked(&[("memory", "64Gi")], &[]), &cfg).unwrap();
        assert!(v.resources.unwrap().limits.is_none());

        cfg.max_compute_cpu = Some("2".into());
        cfg.max_compute_memory = Some("4Gi".into());
        for (requests, limits, field) in [
            (
                vec![("memory", "8Gi")],
                vec![],
                "spec.compute.resources.requests.memory 8Gi",
            ),
            (
                vec![],
                vec![("cpu", "2500m")],
                "spec.compute.resources.limits.cpu 2500m",
            ),
        ] {
            let p = validate_spec(&asked(&requests, &limits), &cfg).unwrap_err();
            assert_eq!(p.reason, "ResourceLimitExceeded");
            assert!(p.message.starts_with(field), "{p:?}");
            assert!(p.message.contains("compute.maxResources"), "{p:?}");
        }
        // Within the maximum: accepted, and the maximum is the limit where none was set.
        let v = validate_spec(
            &asked(&[("cpu", "500m"), ("memory", "1Gi")], &[("memory", "2Gi")]),
            &cfg,
        )
        .unwrap()
        .resources
        .unwrap();
        let limits = v.limits.unwrap();
        assert_eq!(limits["cpu"], Quantity("2".into()));
        assert_eq!(limits["memory"], Quantity("2Gi".into()));
        let none = validate_spec(&branch("dev", fork_spec()), &cfg).unwrap();
        assert_eq!(
            none.resources.unwrap().limits.unwrap()["memory"],
            Quantity("4Gi".into())
        );
        let p = validate_spec(&asked(&[("cpu", "lots")], &[]), &cfg).unwrap_err();
        assert!(
            p.message.starts_with("spec.compute.resources.requests.cpu"),
            "{p:?}"
        );
    }

    #[test]
    fn a_root_gets_the_defaults() {
        let cfg = Config::for_namespace("ramify-system");
        let v = validate_spec(&branch("dev", Default::default()), &cfg).unwrap();
        assert_eq!(v.at, None);
        assert_eq!((v.user.as_str(), v.database.as_str()), ("app", "app"));
        assert_eq!(v.suspend_after, Some(Duration::from_secs(300)));
    }

    #[test]
    fn a_fork_defaults_to_latest_and_zero_means_never_suspend() {
        let cfg = Config::for_namespace("ramify-system");
        let mut spec = fork_spec();
        spec.compute = Some(ComputeSpec {
            suspend_after: Some("0s".into()),
            ..Default::default()
        });
        let v = validate_spec(&branch("dev", spec), &cfg).unwrap();
        assert_eq!(v.at, Some(At::Latest));
        assert_eq!(v.suspend_after, None);
    }

    #[test]
    fn invalid_specs_say_what_is_valid() {
        let cfg = Config::for_namespace("ramify-system");
        let root_with_at = DatabaseBranchSpec {
            at: Some(BranchPoint {
                lsn: Some("0/10".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let p = validate_spec(&branch("dev", root_with_at), &cfg).unwrap_err();
        assert!(p.message.contains("needs spec.parent"), "{p:?}");

        let wrong_version = DatabaseBranchSpec {
            postgres_version: Some(16),
            ..Default::default()
        };
        let p = validate_spec(&branch("dev", wrong_version), &cfg).unwrap_err();
        assert_eq!(p.reason, "UnsupportedPostgresVersion");
        assert!(p.message.contains("runs Postgres 15"), "{p:?}");

        let mut reserved = fork_spec();
        reserved.compute = Some(ComputeSpec {
            postgres_parameters: BTreeMap::from([("port".into(), "1".into())]),
            ..Default::default()
        });
        let p = validate_spec(&branch("dev", reserved), &cfg).unwrap_err();
        assert!(
            p.message
                .contains("`port` cannot be set: Ramify manages it"),
            "{p:?}"
        );

        // What a tenant would try first to get a shell or load code in the compute: the
        // operator refuses it too (the CRD's CEL rule refuses it before, see crds/).
        for (name, why) in [
            ("restore_command", "runs a program"),
            ("shared_preload_libraries", "loads code"),
            ("ssl_passphrase_command", "runs a program"),
            ("log_directory", "names a file or directory"),
            (
                "recovery_target_action",
                "recovery, replication or archiving",
            ),
        ] {
            let mut spec = fork_spec();
            spec.compute = Some(ComputeSpec {
                postgres_parameters: BTreeMap::from([(name.into(), "x".into())]),
                ..Default::default()
            });
            let p = validate_spec(&branch("dev", spec), &cfg).unwrap_err();
            assert_eq!(p.reason, "InvalidSpec");
            assert!(
                p.message.starts_with("spec.compute.postgresParameters: ")
                    && p.message.contains(&format!("`{name}`"))
                    && p.message.contains(why),
                "{p:?}"
            );
        }
        let mut fine = fork_spec();
        fine.compute = Some(ComputeSpec {
            postgres_parameters: BTreeMap::from([
                ("work_mem".into(), "64MB".into()),
                ("log_min_duration_statement".into(), "250ms".into()),
                ("auto_explain.log_min_duration".into(), "1s".into()),
            ]),
            ..Default::default()
        });
        validate_spec(&branch("dev", fine), &cfg).unwrap();

        let mut bad_lsn = fork_spec();
        bad_lsn.at = Some(BranchPoint {
            lsn: Some("zz".into()),
            ..Default::default()
        });
        let p = validate_spec(&branch("dev", bad_lsn), &cfg).unwrap_err();
        assert!(p.message.starts_with("spec.at.lsn"), "{p:?}");

        let mut bad_user = fork_spec();
        bad_user.connection = Some(ramify_crd::ConnectionSpec {
            user: Some("postgres".into()),
            database: None,
        });
        let p = validate_spec(&branch("dev", bad_user), &cfg).unwrap_err();
        assert!(p.message.contains("reserved"), "{p:?}");
    }

    fn follower_spec() -> DatabaseBranchSpec {
        DatabaseBranchSpec {
            source: Some(ramify_crd::BranchSource {
                external: Some(ramify_crd::ExternalSource {
                    connection_secret_ref: ramify_crd::SecretKeyRef {
                        name: "prod-db".into(),
                        key: "uri".into(),
                    },
                    mode: None,
                    slot: Some("ramify".into()),
                    publication: None,
                }),
            }),
            compute: Some(ComputeSpec {
                suspend_after: Some("5m".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_follower_never_suspends_and_may_name_the_sources_database() {
        let cfg = Config::for_namespace("ramify-system");
        let v = validate_spec(&branch("prod", follower_spec()), &cfg).unwrap();
        assert!(v.following);
        assert_eq!(
            v.suspend_after, None,
            "spec.compute.suspendAfter is ignored"
        );
        assert!(!v.database_given);
        let mut spec = follower_spec();
        spec.connection = Some(ramify_crd::ConnectionSpec {
            user: None,
            database: Some("postgres".into()),
        });
        let v = validate_spec(&branch("prod", spec), &cfg).unwrap();
        assert_eq!((v.database.as_str(), v.database_given), ("postgres", true));
        // An ordinary branch's own database may not be called postgres.
        let mut spec = fork_spec();
        spec.connection = Some(ramify_crd::ConnectionSpec {
            user: None,
            database: Some("postgres".into()),
        });
        assert!(validate_spec(&branch("dev", spec), &cfg).is_err());
    }

    #[test]
    fn what_a_follower_cannot_be() {
        let cfg = Config::for_namespace("ramify-system");
        type Change = fn(&mut DatabaseBranchSpec);
        let cases: [(Change, &str); 5] = [
            (
                |s| s.parent = fork_spec().parent,
                "spec.source and spec.parent exclude each other",
            ),
            (
                |s| s.postgres_version = Some(15),
                "spec.postgresVersion is only for new empty roots",
            ),
            (|s| s.ttl = Some("2h".into()), "does not expire"),
            (
                |s| {
                    s.connection = Some(ramify_crd::ConnectionSpec {
                        user: Some("app".into()),
                        database: None,
                    })
                },
                "its logins are its source's roles",
            ),
            (
                |s| {
                    if let Some(e) = s.source.as_mut().and_then(|s| s.external.as_mut()) {
                        e.mode = Some(ramify_crd::ReplicationMode::Logical);
                    }
                },
                "mode logical needs publication",
            ),
        ];
        for (change, said) in cases {
            let mut spec = follower_spec();
            change(&mut spec);
            let p = validate_spec(&branch("prod", spec), &cfg).unwrap_err();
            assert!(p.message.contains(said), "{said}: {p:?}");
        }
    }

    #[test]
    fn branch_points() {
        assert_eq!(branch_point(None).unwrap(), At::Latest);
        assert_eq!(
            branch_point(Some(&BranchPoint::default())).unwrap(),
            At::Latest
        );
        let lsn = BranchPoint {
            lsn: Some("0/16B3748".into()),
            ..Default::default()
        };
        assert_eq!(
            branch_point(Some(&lsn)).unwrap(),
            At::Lsn("0/16B3748".parse().unwrap())
        );
        let two = BranchPoint {
            lsn: Some("0/1".into()),
            snapshot: Some("s".into()),
            ..Default::default()
        };
        assert!(branch_point(Some(&two)).is_err());
    }

    /// `spec.at.time` as the API server hands the branch over: as psql prints
    /// `select now()`, or RFC 3339 (what older objects hold).
    #[test]
    fn branch_point_times_as_psql_prints_them() {
        let at = |time: &str| {
            let b: DatabaseBranch = serde_json::from_value(serde_json::json!({
                "apiVersion": "ramify.dev/v1alpha1",
                "kind": "DatabaseBranch",
                "metadata": {"name": "past", "namespace": "dev"},
                "spec": {"parent": {"name": "main"}, "at": {"time": time}},
            }))
            .map_err(|e| e.to_string())?;
            branch_point(b.spec.at.as_ref()).map_err(|p| format!("{}: {}", p.reason, p.message))
        };
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-04T14:45:02.954757Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(at("2026-12-04 14:45:02.954757+00"), Ok(At::Time(t)));
        assert_eq!(at("2026-12-04 06:45:02.954757-08"), Ok(At::Time(t)));
        assert_eq!(at("2026-12-04T14:45:02.954757Z"), Ok(At::Time(t)));
        assert_eq!(at("2026-12-04T20:15:02.954757+05:30"), Ok(At::Time(t)));
        let err = at("2026-02-30 14:45:02+00").unwrap_err();
        assert!(
            err.starts_with("InvalidSpec: spec.at.time: invalid time")
                && err.contains("no day 2026-02-30"),
            "{err}"
        );
        let err = at("2026-12-04 14:45:02").unwrap_err();
        assert!(
            err.starts_with("InvalidSpec: spec.at.time: time 2026-12-04 14:45:02 has no time zone"),
            "{err}"
        );
    }

    #[test]
    fn sharing_by_name_and_by_selector() {
        let mut parent = branch("prod", Default::default());
        let labels = BTreeMap::from([("team".to_string(), "web".to_string())]);
        assert!(parent_shares(&parent, "prod", &BTreeMap::new()));
        assert!(!parent_shares(&parent, "dev", &labels));
        parent.spec.sharing = Some(SharingSpec {
            namespaces: vec!["dev".into()],
            namespace_selector: None,
        });
        assert!(parent_shares(&parent, "dev", &BTreeMap::new()));
        assert!(!parent_shares(&parent, "pr-1", &labels));
        parent.spec.sharing = Some(SharingSpec {
            namespaces: vec![],
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "team".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "api".into()]),
                }]),
                ..Default::default()
            }),
        });
        assert!(parent_shares(&parent, "pr-1", &labels));
        assert!(!parent_shares(&parent, "pr-1", &BTreeMap::new()));
    }

    #[test]
    fn selector_operators() {
        let labels = BTreeMap::from([("a".to_string(), "1".to_string())]);
        let req = |op: &str, values: Option<Vec<String>>| LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "a".into(),
                operator: op.into(),
                values,
            }]),
            ..Default::default()
        };
        assert!(selector_matches(&LabelSelector::default(), &labels));
        assert!(selector_matches(&req("Exists", None), &labels));
        assert!(!selector_matches(&req("DoesNotExist", None), &labels));
        assert!(!selector_matches(
            &req("NotIn", Some(vec!["1".into()])),
            &labels
        ));
        assert!(selector_matches(
            &req("NotIn", Some(vec!["2".into()])),
            &labels
        ));
        assert!(!selector_matches(&req("Bogus", None), &labels));
    }
}
