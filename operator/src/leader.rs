//! Lease-based leader election (coordination.k8s.io/v1), so more than one replica can
//! run and exactly one reconciles and answers the proxy. Updates use the Lease's
//! resourceVersion: of two replicas racing for an expired lease, one write fails.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tracing::{info, warn};

/// How long a lease stays valid without renewal.
const LEASE_SECS: i32 = 15;
/// How often the leader renews.
const RENEW_EVERY: Duration = Duration::from_secs(5);

/// One replica's candidacy for the lease `name`.
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> LeaderElection {
        LeaderElection {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) if !logged => {
                    info!(lease = %self.name, "another replica leads; waiting");
                    logged = true;
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "lease not readable"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Renews the lease until it is lost (another holder, or no successful renewal for a
    /// whole lease period); then returns, and the caller must stop leading.
    pub async fn keep(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW_EVERY).await;
            match self.try_acquire().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "lease taken by another replica");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() >= Duration::from_secs(LEASE_SECS as u64) {
                        return;
                    }
                }
            }
        }
    }

    /// Takes or renews the lease if it is free, expired or already ours.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        let mine =
            |spec: &LeaseSpec| spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let mut lease = match current {
            None => Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec::default()),
            },
            Some(l) => {
                let spec = l.spec.clone().unwrap_or_default();
                if !mine(&spec) && !expired(&spec, now) {
                    return Ok(false);
                }
                l
            }
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !mine(spec) {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(LEASE_SECS);
        spec.renew_time = Some(MicroTime(now));
        let result = if lease.metadata.resource_version.is_some() {
            self.api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
        } else {
            self.api.create(&PostParams::default(), &lease).await
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renewed) = &spec.renew_time else {
        return true;
    };
    let secs = spec.lease_duration_seconds.unwrap_or(LEASE_SECS) as i64;
    renewed.0.as_second() + secs < now.as_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_after_its_duration() {
        let now = Timestamp::now();
        let spec = |ago: i64| LeaseSpec {
            renew_time: Some(MicroTime(
                Timestamp::from_second(now.as_second() - ago).unwrap(),
            )),
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(!expired(&spec(5), now));
        assert!(expired(&spec(20), now));
        assert!(expired(&LeaseSpec::default(), now));
    }
}
