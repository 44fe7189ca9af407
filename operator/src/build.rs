//! The Kubernetes objects a branch produces, built without touching the API: its Secret,
//! Service and EndpointSlice (in the branch's namespace), its compute Pod and Timeline
//! (in the storage namespace). Names are deterministic, so applying twice is a no-op.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    Lifecycle, LifecycleHandler, PersistentVolumeClaimVolumeSource, Pod, PodAffinity,
    PodAffinityTerm, PodSecurityContext, PodSpec, Probe, SeccompProfile, Secret, SecurityContext,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use kube::Resource;
use ramify_api::TimelineInfo;
use ramify_compute::settings::{ComputeSettings, SettingsError};
use ramify_compute::Standby;
use ramify_crd::{BranchOwner, DatabaseBranch, Timeline, TimelineSpec};

use crate::config::Config;

/// Field manager of every object the operator applies.
pub const FIELD_MANAGER: &str = "ramify-operator";
/// Port the branch's Service and every compute's Postgres listen on.
pub const POSTGRES_PORT: u16 = 5432;
/// Name of the storage StatefulSet's volume claim template.
pub const STORAGE_CLAIM: &str = "data";
/// Where a compute mounts its timeline directory.
pub const TIMELINE_MOUNT: &str = "/var/lib/ramify/timeline";
/// The directories of its timeline a compute Pod mounts (see [`compute_pod`]).
pub const COMPUTE_DIRS: [&str; 3] = ["pgdata", "archive-inbox", "run"];
/// UID and GID of `postgres` in the official image (and of the storage node).
pub const POSTGRES_UID: i64 = 999;

pub const LABEL_BRANCH_NAME: &str = "ramify.dev/branch-name";
pub const LABEL_BRANCH_NAMESPACE: &str = "ramify.dev/branch-namespace";
pub const LABEL_TIMELINE: &str = "ramify.dev/timeline";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Label value of compute Pods.
pub const COMPONENT_COMPUTE: &str = "compute";

/// Everything about a branch the builders need, resolved by the reconciler.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchPlan {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    /// The timeline the branch runs on.
    pub timeline_id: String,
    /// The storage node (StatefulSet Pod) holding it.
    pub storage_node: String,
    /// The parent's timeline object name (`tl-…`), for forks.
    pub parent_timeline: Option<String>,
    pub user: String,
    pub database: String,
    pub proxy_port: u16,
    pub postgres_parameters: BTreeMap<String, String>,
    /// The storage node's `archive_command` for this timeline.
    pub archive_command: String,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Set for a following branch: its compute is a hot standby of the source.
    pub standby: Option<Standby>,
    /// Set for a branch kept in the backup repository: its compute's `archive_timeout`.
    pub archive_timeout_secs: Option<u32>,
    /// Its compute may run `initdb` (see [`ComputeFacts::initdb`]).
    pub initdb: bool,
    /// A following branch (of either mode): it never suspends.
    pub following: bool,
    /// A physical following branch: its Secret names no role (its logins are the
    /// source's).
    pub source_logins: bool,
}

/// What starting a timeline's compute needs from its storage node, remembered per
/// timeline so that a wake needs no storage call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeFacts {
    /// The node's `archive_command` for the timeline.
    pub archive_command: String,
    /// For a following root: how its compute streams from the source, with the password
    /// file the node wrote into the timeline's `run/` as the Pod mounts it.
    pub standby: Option<Standby>,
    /// Set for a timeline kept in the node's backup repository: its compute switches WAL
    /// segments at least this often, which bounds what a lost volume loses.
    pub archive_timeout_secs: Option<u32>,
    /// A root an older release created empty (no snapshot yet): its first compute runs
    /// `initdb`. Every other timeline's compute refuses to start without a cluster.
    pub initdb: bool,
}

impl ComputeFacts {
    /// The facts of a timeline as its storage node describes it.
    pub fn of(info: &TimelineInfo) -> ComputeFacts {
        ComputeFacts {
            archive_command: info.archive_command.clone(),
            standby: info
                .follow
                .as_ref()
                .filter(|f| f.mode.is_physical())
                .map(|f| Standby {
                    conninfo: f.conninfo.clone(),
                    passfile: PathBuf::from(TIMELINE_MOUNT).join("run").join(&f.passfile),
                    slot: f.slot.clone(),
                }),
            archive_timeout_secs: info
                .backup
                .as_ref()
                .map(|_| ramify_compute::DURABLE_ARCHIVE_TIMEOUT_SECS),
            initdb: info.parent.is_none() && info.follow.is_none() && info.snapshots.is_empty(),
        }
    }
}

/// `<branch>-postgres`: the Secret and the Service.
pub fn connection_name(branch: &str) -> String {
    format!("{branch}-postgres")
}

/// The EndpointSlice backing the branch's Service with the proxy's Pods.
pub fn endpoint_slice_name(branch: &str) -> String {
    format!("{branch}-postgres-proxy")
}

/// The compute Pod of a timeline.
pub fn compute_pod_name(timeline_id: &str) -> String {
    format!("compute-{timeline_id}")
}

/// The Timeline object of a timeline.
pub fn timeline_name(timeline_id: &str) -> String {
    format!("tl-{timeline_id}")
}

/// Host name of the branch's Service.
pub fn service_host(branch: &str, namespace: &str, cluster_domain: &str) -> String {
    format!(
        "{}.{namespace}.svc.{cluster_domain}",
        connection_name(branch)
    )
}

/// Labels every object of a branch carries.
pub fn branch_labels(name: &str, namespace: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "ramify".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        (LABEL_BRANCH_NAME.into(), name.into()),
        (LABEL_BRANCH_NAMESPACE.into(), namespace.into()),
    ])
}

fn owner(branch: &DatabaseBranch) -> Option<OwnerReference> {
    branch.controller_owner_ref(&())
}

fn branch_meta(branch: &DatabaseBranch, plan: &BranchPlan, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(plan.namespace.clone()),
        labels: Some(branch_labels(&plan.name, &plan.namespace)),
        owner_references: owner(branch).map(|o| vec![o]),
        ..Default::default()
    }
}

/// Annotation of a following branch's connection Secret: whose logins open it.
pub const LOGINS_ANNOTATION: &str = "ramify.dev/logins";

/// The connection Secret: host, port, database, user, password, a `postgresql://` URI and,
/// when the proxy has a TLS CA, its certificate `ca.crt`. A physical follower's names no
/// user or password (its roles are its source's, whose passwords Ramify does not know):
/// its `uri` has none, and annotation [`LOGINS_ANNOTATION`] says so.
pub fn secret(branch: &DatabaseBranch, plan: &BranchPlan, password: &str, cfg: &Config) -> Secret {
    let host = service_host(&plan.name, &plan.namespace, &cfg.cluster_domain);
    let mut data = BTreeMap::from([
        ("host".to_string(), host.clone()),
        ("port".to_string(), POSTGRES_PORT.to_string()),
        ("database".to_string(), plan.database.clone()),
    ]);
    let mut meta = branch_meta(branch, plan, connection_name(&plan.name));
    if plan.source_logins {
        data.insert(
            "uri".to_string(),
            format!("postgresql://{host}:{POSTGRES_PORT}/{}", plan.database),
        );
        meta.annotations = Some(BTreeMap::from([(
            LOGINS_ANNOTATION.to_string(),
            "source: a read-only copy of another Postgres; log in with a role and password of that Postgres"
                .to_string(),
        )]));
    } else {
        data.insert("user".to_string(), plan.user.clone());
        data.insert("password".to_string(), password.to_string());
        data.insert(
            "uri".to_string(),
            format!(
                "postgresql://{}:{password}@{host}:{POSTGRES_PORT}/{}",
                plan.user, plan.database
            ),
        );
    }
    // The CA the proxy's certificate for this branch chains to: mounted as a file, it is
    // the `sslrootcert` of sslmode=verify-full.
    if let Some(ca) = &cfg.tls_ca_cert {
        data.insert("ca.crt".to_string(), ca.clone());
    }
    Secret {
        metadata: meta,
        type_: Some("Opaque".into()),
        string_data: Some(data),
        ..Default::default()
    }
}

/// The branch's Service: no selector; its EndpointSlice points at the proxy.
pub fn service(branch: &DatabaseBranch, plan: &BranchPlan) -> Service {
    Service {
        metadata: branch_meta(branch, plan, connection_name(&plan.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort {
                name: Some("postgres".into()),
                port: POSTGRES_PORT.into(),
                protocol: Some("TCP".into()),
                app_protocol: Some("postgresql".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The EndpointSlice sending the branch's Service to the branch's port on every ready
/// proxy Pod.
pub fn endpoint_slice(
    branch: &DatabaseBranch,
    plan: &BranchPlan,
    proxy_ips: &[String],
) -> EndpointSlice {
    let mut meta = branch_meta(branch, plan, endpoint_slice_name(&plan.name));
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(
        "kubernetes.io/service-name".into(),
        connection_name(&plan.name),
    );
    labels.insert(
        "endpointslice.kubernetes.io/managed-by".into(),
        "operator.ramify.dev".into(),
    );
    let mut ips = proxy_ips.to_vec();
    ips.sort();
    ips.dedup();
    EndpointSlice {
        metadata: meta,
        address_type: "IPv4".into(),
        endpoints: Some(
            ips.into_iter()
                .map(|ip| Endpoint {
                    addresses: vec![ip],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("postgres".into()),
            port: Some(plan.proxy_port.into()),
            protocol: Some("TCP".into()),
            app_protocol: Some("postgresql".into()),
        }]),
    }
}

/// The `Timeline` object mirroring the branch's storage timeline.
pub fn timeline(plan: &BranchPlan, cfg: &Config) -> Timeline {
    let mut t = Timeline::new(
        &timeline_name(&plan.timeline_id),
        TimelineSpec {
            id: plan.timeline_id.clone(),
            storage_node: plan.storage_node.clone(),
            parent: plan.parent_timeline.clone(),
            branch: BranchOwner {
                namespace: plan.namespace.clone(),
                name: plan.name.clone(),
                uid: plan.uid.clone(),
            },
        },
    );
    t.metadata.namespace = Some(cfg.namespace.clone());
    t.metadata.labels = Some(branch_labels(&plan.name, &plan.namespace));
    t
}

/// The `postgres` arguments of a compute: every Ramify setting (a hot standby's too, for a
/// following branch) and the user's parameters.
pub fn postgres_args(
    archive_command: &str,
    parameters: &BTreeMap<String, String>,
    standby: Option<&Standby>,
    archive_timeout_secs: Option<u32>,
) -> Result<Vec<String>, SettingsError> {
    let settings = ComputeSettings {
        port: POSTGRES_PORT,
        listen_addresses: "*".into(),
        run_dir: PathBuf::from(TIMELINE_MOUNT).join("run"),
        archive_command: archive_command.to_owned(),
        parameters: parameters.clone(),
        standby: standby.cloned(),
        archive_timeout_secs,
    };
    let mut args = vec!["-D".to_string(), pgdata()];
    args.extend(settings.args()?);
    Ok(args)
}

fn pgdata() -> String {
    format!("{TIMELINE_MOUNT}/pgdata")
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

/// The compute Pod: stock Postgres on the timeline's directory of the storage node's
/// volume, on the storage node's machine, as uid 999 under the restricted profile.
pub fn compute_pod(plan: &BranchPlan, cfg: &Config) -> Result<Pod, SettingsError> {
    let mut labels = branch_labels(&plan.name, &plan.namespace);
    labels.insert(LABEL_COMPONENT.into(), COMPONENT_COMPUTE.into());
    labels.insert(LABEL_TIMELINE.into(), plan.timeline_id.clone());
    let env = vec![EnvVar {
        name: "PGDATA".into(),
        value: Some(pgdata()),
        ..Default::default()
    }];
    // Only what the compute needs of its timeline: its PGDATA, its archive inbox (which
    // archive_command writes, as `../archive-inbox`; the storage node moves each arrival
    // into the archive `wal/`) and its socket directory. Its archive, its snapshots and
    // every other timeline on the volume are not in the Pod at all, so it can append to
    // its history but never rewrite it.
    let mut mounts: Vec<VolumeMount> = COMPUTE_DIRS
        .iter()
        .map(|dir| VolumeMount {
            name: "timeline".into(),
            mount_path: format!("{TIMELINE_MOUNT}/{dir}"),
            sub_path: Some(format!("timelines/{}/{dir}", plan.timeline_id)),
            ..Default::default()
        })
        .collect();
    mounts.extend([
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
        VolumeMount {
            name: "run".into(),
            mount_path: "/var/run/postgresql".into(),
            ..Default::default()
        },
    ]);
    let pull = Some(cfg.compute_image_pull_policy.clone());
    // The storage node initialises every new root itself (so its history starts at
    // creation); only a root an older release created empty reaches its first compute
    // without a cluster, and gets one here, made exactly as the node makes them (any
    // other compute without a cluster refuses to start: its timeline is not there). The
    // bootstrap superuser `postgres` only logs in over the Unix socket (trust), which only
    // uid 999 reaches; TCP, from any address (clients arrive through the proxy's Pod IP),
    // needs a SCRAM password, and only the branch's own role has one. Forks inherit
    // these rules.
    let initdb = plan.initdb.then(|| Container {
        name: "initdb".into(),
        image: Some(cfg.compute_image.clone()),
        image_pull_policy: pull.clone(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            ramify_compute::process::initdb_shell_script(),
        ]),
        env: Some(env.clone()),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(restricted()),
        ..Default::default()
    });
    // Every other compute checks for its cluster in its own container, then becomes
    // Postgres: an init container would delay each wake until the kubelet noticed it
    // had exited.
    let command = if plan.initdb {
        vec!["postgres".into()]
    } else {
        vec![
            "sh".into(),
            "-c".into(),
            ramify_compute::process::exec_postgres_if_cluster_shell_script(),
            "postgres".into(),
        ]
    };
    let postgres = Container {
        name: "postgres".into(),
        image: Some(cfg.compute_image.clone()),
        image_pull_policy: pull,
        command: Some(command),
        args: Some(postgres_args(
            &plan.archive_command,
            &plan.postgres_parameters,
            plan.standby.as_ref(),
            plan.archive_timeout_secs,
        )?),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: POSTGRES_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Ready once Postgres accepts connections; during a fork's recovery it refuses
        // them (hot_standby is off), so nobody sees a half-recovered branch. A following
        // branch's hot standby accepts them once it reached a consistent state.
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "pg_isready".into(),
                    "-q".into(),
                    "-h".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    POSTGRES_PORT.to_string(),
                ]),
            }),
            period_seconds: Some(1),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        // Fast shutdown on suspend, so the next start needs no crash recovery.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        "pg_ctl".into(),
                        "stop".into(),
                        "-D".into(),
                        pgdata(),
                        "-m".into(),
                        "fast".into(),
                        "-w".into(),
                        "-t".into(),
                        "50".into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: plan.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(restricted()),
        ..Default::default()
    };
    let mut storage_pod = BTreeMap::new();
    storage_pod.insert(
        "statefulset.kubernetes.io/pod-name".to_string(),
        plan.storage_node.clone(),
    );
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(compute_pod_name(&plan.timeline_id)),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(PodSpec {
            init_containers: initdb.map(|c| vec![c]),
            containers: vec![postgres],
            // On the machine of the storage node that holds the timeline: the volume is
            // a local (ReadWriteOnce) one, shared by every Pod on that machine.
            affinity: Some(Affinity {
                pod_affinity: Some(PodAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            label_selector: Some(LabelSelector {
                                match_labels: Some(storage_pod),
                                ..Default::default()
                            }),
                            topology_key: "kubernetes.io/hostname".into(),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(POSTGRES_UID),
                run_as_group: Some(POSTGRES_UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(60),
            restart_policy: Some("Always".into()),
            volumes: Some(vec![
                Volume {
                    name: "timeline".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: format!("{STORAGE_CLAIM}-{}", plan.storage_node),
                        read_only: Some(false),
                    }),
                    ..Default::default()
                },
                Volume {
                    name: "tmp".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
                Volume {
                    name: "run".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// What a compute Pod's state means for clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodState {
    /// Postgres accepts connections at this IP.
    Ready(String),
    /// Scheduled or starting.
    Starting,
    /// It will not become ready without a change (image missing, crash loop, failed).
    Broken(String),
}

/// Reads a compute Pod's state from its status.
pub fn pod_state(pod: &Pod) -> PodState {
    let Some(status) = &pod.status else {
        return PodState::Starting;
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return PodState::Broken("the compute is shutting down".into());
    }
    if matches!(status.phase.as_deref(), Some("Failed") | Some("Succeeded")) {
        return PodState::Broken(format!(
            "the compute Pod {}: {}",
            status.phase.as_deref().unwrap_or_default(),
            status.message.clone().unwrap_or_default()
        ));
    }
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for cs in statuses {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.as_deref().unwrap_or_default();
            if matches!(
                reason,
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "CrashLoopBackOff"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
            ) {
                return PodState::Broken(format!(
                    "container {} of the compute: {reason}: {}",
                    cs.name,
                    w.message.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    match (&status.pod_ip, ready) {
        (Some(ip), true) => PodState::Ready(ip.clone()),
        _ => PodState::Starting,
    }
}

/// Whether a proxy Pod should receive clients.
pub fn proxy_pod_ip(pod: &Pod) -> Option<String> {
    match pod_state(pod) {
        PodState::Ready(ip) => Some(ip),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };
    use ramify_crd::DatabaseBranchSpec;

    fn branch() -> DatabaseBranch {
        let mut b = DatabaseBranch::new("alice", DatabaseBranchSpec::default());
        b.metadata.namespace = Some("dev".into());
        b.metadata.uid = Some("6d2f0b8e-0000-4000-8000-000000000001".into());
        b
    }

    fn plan() -> BranchPlan {
        BranchPlan {
            name: "alice".into(),
            namespace: "dev".into(),
            uid: "6d2f0b8e-0000-4000-8000-000000000001".into(),
            timeline_id: "6d2f0b8e-0000-4000-8000-000000000001".into(),
            storage_node: "ramify-storage-0".into(),
            parent_timeline: Some("tl-parent".into()),
            user: "app".into(),
            database: "app".into(),
            proxy_port: 20042,
            postgres_parameters: BTreeMap::from([("work_mem".into(), "64MB".into())]),
            archive_command: "test ! -f ../archive-inbox/%f && cp %p ../archive-inbox/%f".into(),
            resources: None,
            standby: None,
            archive_timeout_secs: None,
            initdb: false,
            following: false,
            source_logins: false,
        }
    }

    #[test]
    fn a_durable_branchs_compute_switches_wal_segments_within_the_rpo() {
        let cfg = Config::for_namespace("ramify-system");
        let timeout = |plan: &BranchPlan| {
            let pod = compute_pod(plan, &cfg).unwrap();
            let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
            args.iter()
                .find_map(|a| a.strip_prefix("archive_timeout="))
                .map(str::to_owned)
        };
        assert_eq!(timeout(&plan()), None);
        let durable = BranchPlan {
            archive_timeout_secs: Some(ramify_compute::DURABLE_ARCHIVE_TIMEOUT_SECS),
            ..plan()
        };
        assert_eq!(timeout(&durable).as_deref(), Some("60s"));
    }

    #[test]
    fn only_a_root_created_empty_may_run_initdb_in_its_compute() {
        let cfg = Config::for_namespace("ramify-system");
        // A fork (or a root restored onto a new volume): no cluster means not there yet,
        // checked in the Postgres container itself (no init container to wait for).
        let spec = compute_pod(&plan(), &cfg).unwrap().spec.unwrap();
        assert!(spec.init_containers.is_none());
        let command = spec.containers[0].command.clone().unwrap();
        assert_eq!(command[..2], ["sh".to_string(), "-c".to_string()]);
        assert!(!command[2].contains("initdb"), "{}", command[2]);
        assert!(
            command[2].contains("exit 1; }; exec postgres \"$@\""),
            "{}",
            command[2]
        );
        // `sh -c SCRIPT NAME ARGS…`: the Postgres settings reach `exec postgres "$@"`.
        assert_eq!(command[3], "postgres");
        let args = spec.containers[0].args.clone().unwrap().join(" ");
        assert!(args.contains("-c listen_addresses=*"), "{args}");
        let legacy = BranchPlan {
            initdb: true,
            ..plan()
        };
        let spec = compute_pod(&legacy, &cfg).unwrap().spec.unwrap();
        let init = &spec.init_containers.unwrap()[0];
        assert!(init.command.clone().unwrap()[2].contains("initdb -D"));
        assert_eq!(
            spec.containers[0].command,
            Some(vec!["postgres".to_string()])
        );
    }

    #[test]
    fn the_secret_holds_everything_a_client_needs() {
        let cfg = Config::for_namespace("ramify-system");
        let s = secret(&branch(), &plan(), "pw0123456789abcdefghijklmnopqrs", &cfg);
        assert_eq!(s.metadata.name.as_deref(), Some("alice-postgres"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("dev"));
        let owner = &s.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("DatabaseBranch", "alice")
        );
        assert_eq!(owner.controller, Some(true));
        let d = s.string_data.unwrap();
        assert_eq!(d["host"], "alice-postgres.dev.svc.cluster.local");
        assert_eq!(d["port"], "5432");
        assert_eq!(
            d["uri"],
            "postgresql://app:pw0123456789abcdefghijklmnopqrs@alice-postgres.dev.svc.cluster.local:5432/app"
        );
        assert_eq!(s.metadata.labels.unwrap()[LABEL_BRANCH_NAME], "alice");
        assert!(!d.contains_key("ca.crt"), "no CA configured");
    }

    #[test]
    fn the_secret_publishes_the_proxy_ca_for_verify_full() {
        let mut cfg = Config::for_namespace("ramify-system");
        cfg.tls_ca_cert = Some("-----BEGIN CERTIFICATE-----\n…".to_string());
        let s = secret(&branch(), &plan(), "pw0123456789abcdefghijklmnopqrs", &cfg);
        assert_eq!(
            s.string_data.unwrap()["ca.crt"],
            "-----BEGIN CERTIFICATE-----\n…"
        );
    }

    #[test]
    fn the_service_has_no_selector_and_its_slice_points_at_the_proxies() {
        let svc = service(&branch(), &plan());
        let spec = svc.spec.unwrap();
        assert!(spec.selector.is_none());
        assert_eq!(spec.ports.unwrap()[0].port, 5432);
        let slice = endpoint_slice(
            &branch(),
            &plan(),
            &["10.0.0.2".into(), "10.0.0.1".into(), "10.0.0.2".into()],
        );
        assert_eq!(
            slice.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"],
            "alice-postgres"
        );
        let eps = slice.endpoints.unwrap();
        let ips: Vec<&str> = eps.iter().map(|e| e.addresses[0].as_str()).collect();
        assert_eq!(ips, ["10.0.0.1", "10.0.0.2"]);
        let port = &slice.ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("postgres"), Some(20042))
        );
    }

    #[test]
    fn the_compute_pod_runs_stock_postgres_next_to_its_storage_node() {
        let cfg = Config::for_namespace("ramify-system");
        // A root an older release created empty: the one compute that runs initdb.
        let legacy_root = BranchPlan {
            initdb: true,
            ..plan()
        };
        let pod = compute_pod(&legacy_root, &cfg).unwrap();
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("compute-6d2f0b8e-0000-4000-8000-000000000001")
        );
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ramify-system"));
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[LABEL_COMPONENT],
            "compute"
        );
        let spec = pod.spec.unwrap();
        // On the storage node's machine.
        let term = &spec
            .affinity
            .unwrap()
            .pod_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["statefulset.kubernetes.io/pod-name"],
            "ramify-storage-0"
        );
        // Its timeline directory of that node's claim.
        let vol = &spec.volumes.as_ref().unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "data-ramify-storage-0"
        );
        let pg = &spec.containers[0];
        // PGDATA, the archive inbox and the socket directory of its own timeline, nothing
        // else of the volume (not its archive `wal/`, not its snapshots, not another
        // timeline).
        let volume: Vec<(String, String)> = pg
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.name == "timeline")
            .map(|m| (m.mount_path.clone(), m.sub_path.clone().unwrap_or_default()))
            .collect();
        let tl = "timelines/6d2f0b8e-0000-4000-8000-000000000001";
        assert_eq!(
            volume,
            ["pgdata", "archive-inbox", "run"]
                .map(|d| (format!("{TIMELINE_MOUNT}/{d}"), format!("{tl}/{d}")))
                .to_vec()
        );
        // Ramify's settings and the user's as arguments.
        let args = pg.args.as_ref().unwrap().join(" ");
        assert!(
            args.starts_with("-D /var/lib/ramify/timeline/pgdata "),
            "{args}"
        );
        assert!(
            args.contains("-c unix_socket_directories=/var/lib/ramify/timeline/run"),
            "{args}"
        );
        assert!(
            args.contains("-c archive_command=test ! -f ../archive-inbox/%f"),
            "{args}"
        );
        assert!(args.contains("-c work_mem=64MB"), "{args}");
        // Restricted profile.
        let psc = spec.security_context.unwrap();
        assert_eq!(
            (psc.run_as_non_root, psc.run_as_user),
            (Some(true), Some(999))
        );
        assert_eq!(psc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for c in spec
            .init_containers
            .as_ref()
            .unwrap()
            .iter()
            .chain(&spec.containers)
        {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_string()][..])
            );
        }
        assert_eq!(spec.automount_service_account_token, Some(false));
        // Initialised once, reachable over TCP with a password only.
        let init = spec.init_containers.unwrap()[0]
            .command
            .clone()
            .unwrap()
            .join(" ");
        assert!(
            init.contains("test -f \"$PGDATA/PG_VERSION\" && exit 0"),
            "{init}"
        );
        assert!(init.contains("host all all all scram-sha-256"), "{init}");
        // The same cluster as the storage node makes: checksums and locale included.
        assert!(
            init.contains("--data-checksums --no-instructions")
                && init.contains("--locale=C.UTF-8"),
            "{init}"
        );
        assert!(
            pg.lifecycle.as_ref().unwrap().pre_stop.is_some(),
            "suspend is a fast shutdown"
        );
    }

    fn follower_plan() -> BranchPlan {
        let info: TimelineInfo = serde_json::from_value(serde_json::json!({
            "id": "6d2f0b8e-0000-4000-8000-000000000001",
            "parent": null, "at": null, "fork_lsn": null, "fork_time": null,
            "state": "ready", "compute": "stopped",
            "created_at": "2026-11-28T12:00:00Z",
            "pgdata": "/data/timelines/x/pgdata", "archive": "/data/timelines/x/wal",
            "run_dir": "/data/timelines/x/run",
            "archive_command": "test ! -f ../archive-inbox/%f && cp %p ../archive-inbox/%f",
            "logical_bytes": 0, "exclusive_bytes": 0, "history_bytes": 0,
            "restore_window": {"from_lsn": null, "from_time": null, "to_lsn": null, "to_time": null},
            "snapshots": [],
            "follow": {
                "conninfo": "postgresql://replicator@prod-db.prod.svc:5432/bank",
                "slot": "ramify_prod",
                "passfile": "source.pass"
            }
        }))
        .unwrap();
        let facts = ComputeFacts::of(&info);
        BranchPlan {
            parent_timeline: None,
            database: "bank".into(),
            archive_command: facts.archive_command,
            standby: facts.standby,
            following: true,
            source_logins: true,
            ..plan()
        }
    }

    #[test]
    fn a_followers_compute_is_a_hot_standby_reading_the_nodes_password_file() {
        let cfg = Config::for_namespace("ramify-system");
        let pod = compute_pod(&follower_plan(), &cfg).unwrap();
        let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
        let setting = |name: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("{name}=")))
                .map(str::to_owned)
        };
        assert_eq!(setting("hot_standby").as_deref(), Some("on"));
        assert_eq!(setting("archive_mode").as_deref(), Some("always"));
        assert_eq!(setting("primary_slot_name").as_deref(), Some("ramify_prod"));
        assert_eq!(
            setting("recovery_target_timeline").as_deref(),
            Some("latest")
        );
        // The password file the storage node wrote into the timeline's run/, as the Pod
        // mounts it; no password anywhere in the Pod.
        assert_eq!(
            setting("primary_conninfo").as_deref(),
            Some("postgresql://replicator@prod-db.prod.svc:5432/bank?passfile=/var/lib/ramify/timeline/run/source.pass&application_name=ramify")
        );
        // An ordinary branch's compute is none of that.
        let pod = compute_pod(&plan(), &cfg).unwrap();
        let args = pod.spec.unwrap().containers[0].args.clone().unwrap();
        assert!(args.iter().any(|a| a == "archive_mode=on"), "{args:?}");
        assert!(!args.iter().any(|a| a.starts_with("primary_conninfo")));
    }

    #[test]
    fn a_followers_secret_names_no_login() {
        let cfg = Config::for_namespace("ramify-system");
        let s = secret(&branch(), &follower_plan(), "", &cfg);
        let d = s.string_data.unwrap();
        assert_eq!(
            d.keys().map(String::as_str).collect::<Vec<_>>(),
            ["database", "host", "port", "uri"]
        );
        assert_eq!(
            d["uri"],
            "postgresql://alice-postgres.dev.svc.cluster.local:5432/bank"
        );
        assert!(s.metadata.annotations.unwrap()[LOGINS_ANNOTATION].starts_with("source"));
    }

    #[test]
    fn reserved_parameters_are_refused_by_the_builder_too() {
        let cfg = Config::for_namespace("ramify-system");
        let mut p = plan();
        p.postgres_parameters
            .insert("archive_command".into(), "true".into());
        assert!(compute_pod(&p, &cfg).is_err());
    }

    fn pod_with(status: PodStatus) -> Pod {
        Pod {
            status: Some(status),
            ..Default::default()
        }
    }

    #[test]
    fn pod_states() {
        assert_eq!(pod_state(&Pod::default()), PodState::Starting);
        let ready = pod_with(PodStatus {
            pod_ip: Some("10.1.1.1".into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: "True".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert_eq!(pod_state(&ready), PodState::Ready("10.1.1.1".into()));
        let pulling = pod_with(PodStatus {
            container_statuses: Some(vec![ContainerStatus {
                name: "postgres".into(),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some("ErrImagePull".into()),
                        message: Some("not found".into()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(matches!(pod_state(&pulling), PodState::Broken(m) if m.contains("ErrImagePull")));
        let failed = pod_with(PodStatus {
            phase: Some("Failed".into()),
            ..Default::default()
        });
        assert!(matches!(pod_state(&failed), PodState::Broken(_)));
    }
}
