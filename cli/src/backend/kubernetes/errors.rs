//! API server errors as one line that speaks Kubernetes: what was forbidden to whom, that
//! the operator is not installed, which object or namespace does not exist.

use kube::core::Status;

/// What the CLI was doing when the API server said no: `create databasebranches.ramify.dev
/// in namespace "team-a"`.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// The RBAC verb: get, list, watch, create, patch, delete.
    pub verb: &'a str,
    /// `plural.group` (`databasebranches.ramify.dev`), or `pods/portforward`.
    pub resource: &'a str,
    /// `None` for cluster-wide requests (`-A`).
    pub namespace: Option<&'a str>,
}

/// Why a request failed, in the words a user acts on.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// RBAC said no.
    #[error("forbidden: {who}cannot {verb} {resource} {scope} (RBAC){hint}")]
    Forbidden {
        /// `user "bob" ` (with the trailing space), or empty when not known.
        who: String,
        verb: String,
        resource: String,
        scope: String,
        hint: String,
    },
    /// Forbidden by something other than RBAC (an admission policy): its own message.
    #[error("refused by the API server: {0}")]
    Refused(String),
    /// The credentials were not accepted.
    #[error("unauthorized: the API server at {0} refused the credentials of the kubeconfig context (expired token? try `kubectl get ns` to log in again)")]
    Unauthorized(String),
    /// The object exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The API server rejected the object (schema or CEL rule).
    #[error("invalid: {0}")]
    Invalid(String),
    /// No `ramify.dev` API in the cluster.
    #[error("the Ramify operator is not installed in this cluster (the API server has no {0}): install it with `helm install ramify-crds charts/ramify-crds` and `helm install ramify charts/ramify -n ramify-system --create-namespace`")]
    NotInstalled(String),
    /// The namespace does not exist.
    #[error("namespace \"{0}\" not found")]
    NoNamespace(String),
    /// The object does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The API server could not be reached.
    #[error("cannot reach the Kubernetes API server at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// Anything else the API server answered.
    #[error("{0}")]
    Other(String),
}

/// The user the API server names in an RBAC denial (`User "bob" cannot …`).
pub fn denied_user(message: &str) -> Option<&str> {
    let rest = message.split_once("User \"")?.1;
    Some(rest.split_once('"')?.0)
}

/// The API server's answer to `op` as a [`KubeError`]; a 404 is left to the caller (who
/// knows whether the CRD, the namespace or the object is missing) as `NotFound` with the
/// server's message.
pub fn classify(status: &Status, op: Op<'_>, server: &str) -> KubeError {
    match status.code {
        403 => match denied_user(&status.message) {
            // RBAC's message always names the user; an admission policy's does not.
            Some(user) if status.message.contains(" cannot ") => KubeError::Forbidden {
                who: format!("user \"{user}\" "),
                verb: op.verb.to_string(),
                resource: op.resource.to_string(),
                scope: match op.namespace {
                    Some(ns) => format!("in namespace \"{ns}\""),
                    None => "at the cluster scope (all namespaces)".to_string(),
                },
                hint: if op.resource == "pods/portforward" {
                    "; port-forwarding to a branch needs get and create on pods/portforward in the storage namespace (--storage-namespace; the chart's Role ramify-connect grants it)".to_string()
                } else {
                    String::new()
                },
            },
            _ => KubeError::Refused(status.message.clone()),
        },
        401 => KubeError::Unauthorized(server.to_string()),
        409 if status.reason == "AlreadyExists" => KubeError::AlreadyExists(status.message.clone()),
        422 => KubeError::Invalid(status.message.clone()),
        404 => KubeError::NotFound(status.message.clone()),
        _ => KubeError::Other(if status.message.is_empty() {
            format!("the API server answered {} {}", status.code, status.reason)
        } else {
            status.message.clone()
        }),
    }
}

/// Any client error for `op`, 404s included as `NotFound`.
pub fn from_kube(e: kube::Error, op: Op<'_>, server: &str) -> KubeError {
    match e {
        kube::Error::Api(status) => classify(&status, op, server),
        kube::Error::HyperError(_) | kube::Error::Service(_) => KubeError::Unreachable {
            url: server.to_string(),
            detail: crate::error_line(&anyhow::Error::new(e)),
        },
        other => KubeError::Other(crate::error_line(&anyhow::Error::new(other))),
    }
}

/// Whether `e` is the API server's 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, reason: &str, message: &str) -> Status {
        serde_json::from_value(serde_json::json!({
            "code": code, "reason": reason, "message": message, "status": "Failure"
        }))
        .unwrap()
    }

    const OP: Op<'static> = Op {
        verb: "create",
        resource: "databasebranches.ramify.dev",
        namespace: Some("team-a"),
    };

    #[test]
    fn rbac_denial_names_user_verb_resource_and_namespace() {
        let s = status(
            403,
            "Forbidden",
            "databasebranches.ramify.dev is forbidden: User \"bob\" cannot create resource \"databasebranches\" in API group \"ramify.dev\" in the namespace \"team-a\"",
        );
        assert_eq!(
            classify(&s, OP, "https://k").to_string(),
            "forbidden: user \"bob\" cannot create databasebranches.ramify.dev in namespace \"team-a\" (RBAC)"
        );
        let pf = Op {
            verb: "create",
            resource: "pods/portforward",
            namespace: Some("ramify-system"),
        };
        let msg = classify(&s, pf, "https://k").to_string();
        assert!(
            msg.contains("pods/portforward in namespace \"ramify-system\" (RBAC); port-forwarding"),
            "{msg}"
        );
        let all = Op {
            verb: "list",
            namespace: None,
            ..OP
        };
        assert!(classify(&s, all, "k")
            .to_string()
            .contains("at the cluster scope"));
    }

    #[test]
    fn an_admission_policy_is_not_called_rbac() {
        let s = status(
            403,
            "Forbidden",
            "databasebranches.ramify.dev \"main\" is forbidden: ValidatingAdmissionPolicy 'p' with binding 'b' denied request: DatabaseBranch dev/main is protected (spec.protected: true)",
        );
        let msg = classify(&s, OP, "k").to_string();
        assert!(msg.starts_with("refused by the API server: "), "{msg}");
        assert!(msg.contains("is protected"), "{msg}");
        assert!(!msg.contains("RBAC"), "{msg}");
    }

    #[test]
    fn other_answers_keep_the_servers_words() {
        let s = status(
            422,
            "Invalid",
            "DatabaseBranch.ramify.dev \"X\" is invalid: metadata.name must be a DNS label",
        );
        assert!(classify(&s, OP, "k")
            .to_string()
            .starts_with("invalid: DatabaseBranch"));
        let s = status(401, "Unauthorized", "Unauthorized");
        assert!(classify(&s, OP, "https://k:6443")
            .to_string()
            .contains("https://k:6443"));
        let s = status(500, "InternalError", "");
        assert_eq!(
            classify(&s, OP, "k").to_string(),
            "the API server answered 500 InternalError"
        );
    }
}
