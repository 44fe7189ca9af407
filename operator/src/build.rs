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
use ramify_compute::settings::{ComputeSettings, SettingsError};
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

/// The connection Secret: host, port, database, user, password and a `postgresql://` URI.
pub fn secret(branch: &DatabaseBranch, plan: &BranchPlan, password: &str, cfg: &Config) -> Secret {
    let host = service_host(&plan.name, &plan.namespace, &cfg.cluster_domain);
    let uri = format!(
        "postgresql://{}:{password}@{host}:{POSTGRES_PORT}/{}",
        plan.user, plan.database
    );
    let data = BTreeMap::from([
        ("host".to_string(), host),
        ("port".to_string(), POSTGRES_PORT.to_string()),
        ("database".to_string(), plan.database.clone()),
        ("user".to_string(), plan.user.clone()),
        ("password".to_string(), password.to_string()),
        ("uri".to_string(), uri),
    ]);
    Secret {
        metadata: branch_meta(branch, plan, connection_name(&plan.name)),
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

/// The `postgres` arguments of a compute: every Ramify setting and the user's parameters.
pub fn postgres_args(
    archive_command: &str,
    parameters: &BTreeMap<String, String>,
) -> Result<Vec<String>, SettingsError> {
    let settings = ComputeSettings {
        port: POSTGRES_PORT,
        listen_addresses: "*".into(),
        run_dir: PathBuf::from(TIMELINE_MOUNT).join("run"),
        archive_command: archive_command.to_owned(),
        parameters: parameters.clone(),
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
    let mounts = vec![
        VolumeMount {
            name: "timeline".into(),
            mount_path: TIMELINE_MOUNT.into(),
            sub_path: Some(format!("timelines/{}", plan.timeline_id)),
            ..Default::default()
        },
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
    ];
    let pull = Some(cfg.compute_image_pull_policy.clone());
    // A new root's data directory is empty: initdb it once. The bootstrap superuser
    // `postgres` only logs in over the Unix socket (trust), which only uid 999 reaches;
    // TCP needs a SCRAM password, and only the branch's own role has one.
    let initdb = Container {
        name: "initdb".into(),
        image: Some(cfg.compute_image.clone()),
        image_pull_policy: pull.clone(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            "test -f \"$PGDATA/PG_VERSION\" || exec initdb -D \"$PGDATA\" -U postgres --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --no-instructions".into(),
        ]),
        env: Some(env.clone()),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(restricted()),
        ..Default::default()
    };
    let postgres = Container {
        name: "postgres".into(),
        image: Some(cfg.compute_image.clone()),
        image_pull_policy: pull,
        command: Some(vec!["postgres".into()]),
        args: Some(postgres_args(
            &plan.archive_command,
            &plan.postgres_parameters,
        )?),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("postgres".into()),
            container_port: POSTGRES_PORT.into(),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Ready once Postgres accepts connections; during a fork's recovery it refuses
        // them (hot_standby is off), so nobody sees a half-recovered branch.
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
            init_containers: Some(vec![initdb]),
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
