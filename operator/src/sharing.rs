//! Cross-namespace forks: a branch in another namespace may fork a parent only while the
//! parent's `spec.sharing` accepts that namespace (like a Gateway API ReferenceGrant).
//! Checked at every use, not only at creation: revoking sharing stops a reset pulling
//! the parent's data again, and a child the parent does not share with neither blocks the
//! parent's deletion nor is deleted with it.

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use ramify_crd::DatabaseBranch;

use crate::validate::parent_shares;

/// Whether `parent` shares itself with namespace `ns` right now (its own namespace
/// always; another by name or by the namespace's labels).
pub async fn shares_with(
    client: &kube::Client,
    parent: &DatabaseBranch,
    ns: &str,
) -> Result<bool, kube::Error> {
    if parent.metadata.namespace.as_deref() == Some(ns) {
        return Ok(true);
    }
    let labels = Api::<Namespace>::all(client.clone())
        .get_opt(ns)
        .await?
        .and_then(|n| n.metadata.labels)
        .unwrap_or_default();
    Ok(parent_shares(parent, ns, &labels))
}

/// The message of a refused cross-namespace use of `parent`.
pub fn not_shared(parent_ns: &str, parent: &str, ns: &str) -> String {
    format!(
        "parent branch {parent_ns}/{parent} does not share itself with namespace {ns}: add \
         {ns:?} to its spec.sharing.namespaces or match its spec.sharing.namespaceSelector"
    )
}
