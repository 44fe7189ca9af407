//! The operator writes objects under names it derives from a branch (`<branch>-postgres`
//! Secret and Service, their EndpointSlice) in namespaces where users have their own
//! objects. It overwrites or deletes one only when it carries an owner reference to that
//! branch: an object of the same name it did not create is a conflict the user resolves,
//! never something to replace (a tenant who may create branches but not Secrets must not
//! be able to have the operator overwrite or delete a Secret for them).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::validate::Problem;

/// `Ready` condition reason of a name taken by an object the branch does not own.
pub const CONFLICT: &str = "Conflict";

/// Whether `meta` names the object with uid `owner_uid` among its owners.
pub fn owned_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == owner_uid)
}

/// The problem of an object `kind` `ns/name` that exists and is not the branch's.
pub fn conflict(kind: &str, ns: &str, name: &str) -> Problem {
    Problem {
        reason: CONFLICT,
        message: format!(
            "{kind} {ns}/{name} exists and was not created by Ramify for this branch (no owner \
             reference to it): Ramify neither overwrites nor deletes it; delete or rename that \
             {kind}, or give the branch another name"
        ),
    }
}

/// Why an existing object blocks writing `name`, or what it holds when it is the branch's
/// own (`Ok(None)`: absent, free to create).
pub async fn claim<K>(
    api: &Api<K>,
    kind: &str,
    ns: &str,
    name: &str,
    owner_uid: &str,
) -> Result<Result<Option<K>, Problem>, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    Ok(match api.get_opt(name).await? {
        None => Ok(None),
        Some(o) if owned_by(o.meta(), owner_uid) => Ok(Some(o)),
        Some(_) => Err(conflict(kind, ns, name)),
    })
}

/// Deletes `name` if the branch owns it — checked by the API server too (a precondition
/// on the object's uid, so one recreated meanwhile by someone else survives). Returns
/// whether an object of that name was left alone because it is not the branch's.
pub async fn delete_owned<K>(api: &Api<K>, name: &str, owner_uid: &str) -> Result<bool, kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let Some(o) = api.get_opt(name).await? else {
        return Ok(false);
    };
    if !owned_by(o.meta(), owner_uid) {
        return Ok(true);
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: o.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(false),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn meta(owners: &[&str]) -> ObjectMeta {
        ObjectMeta {
            owner_references: Some(
                owners
                    .iter()
                    .map(|uid| OwnerReference {
                        uid: (*uid).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn ownership_is_by_uid_only() {
        assert!(owned_by(&meta(&["a", "b"]), "b"));
        assert!(!owned_by(&meta(&["a"]), "b"));
        assert!(!owned_by(&ObjectMeta::default(), "b"));
    }

    #[test]
    fn conflict_names_the_object_and_the_way_out() {
        let p = conflict("Secret", "team-a", "main-postgres");
        assert_eq!(p.reason, "Conflict");
        assert!(
            p.message.starts_with("Secret team-a/main-postgres exists"),
            "{p:?}"
        );
        assert!(
            p.message.contains("neither overwrites nor deletes"),
            "{p:?}"
        );
    }
}
