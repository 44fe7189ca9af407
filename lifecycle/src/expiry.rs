//! Protection and expiry: settings that change without touching the compute, and the
//! reaper that deletes expired branches with their compute and storage.

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::core::{refuse_if_protected, Lifecycle, LifecycleError, Runtime};
use crate::model::*;

impl<R: Runtime> Lifecycle<R> {
    /// Protects/unprotects the branch and sets or clears its expiry. Protecting clears an
    /// expiry (a protected branch never expires); setting one on a protected branch is
    /// refused.
    pub async fn update(
        &self,
        name: &str,
        req: UpdateBranch,
    ) -> Result<BranchView, LifecycleError> {
        let lock = self.lock_of(name);
        let branch = {
            let _g = lock.lock().await;
            let mut branch = self.branch(name)?;
            if let Some(p) = req.protected {
                branch.protected = p;
                if p {
                    branch.expires_at = None;
                }
            }
            match req.expiry {
                Some(Expiry::At(t)) => {
                    refuse_if_protected(&branch, "given an expiry")?;
                    check_future(t, Utc::now())?;
                    branch.expires_at = Some(t);
                }
                Some(Expiry::Never) => branch.expires_at = None,
                None => {}
            }
            self.store.put(&branch)?;
            branch
        };
        info!(branch = name, protected = branch.protected, expires_at = ?branch.expires_at, "branch updated");
        self.view(&branch).await
    }

    /// Deletes every unprotected branch whose expiry has passed (compute, port and
    /// storage); one with children is kept, with a warning, until they are gone.
    /// Returns the names deleted.
    pub async fn reap_expired(&self, now: DateTime<Utc>) -> Result<Vec<String>, LifecycleError> {
        let all = self.store.all()?;
        let mut deleted = Vec::new();
        for b in &all {
            let Some(t) = b.expires_at.filter(|t| *t <= now && !b.protected) else {
                continue;
            };
            let children: Vec<&str> = all
                .iter()
                .filter(|c| c.parent.as_deref() == Some(b.name.as_str()))
                .map(|c| c.name.as_str())
                .collect();
            if !children.is_empty() {
                let first_time = self
                    .expiry_blocked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(b.name.clone());
                if first_time {
                    warn!(branch = %b.name, children = %children.join(", "), "expired branch kept: it has child branches");
                }
                continue;
            }
            match self.delete(&b.name, false).await {
                Ok(()) => {
                    self.expiry_blocked
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&b.name);
                    info!(branch = %b.name, expired_at = %t, "expired branch deleted");
                    deleted.push(b.name.clone());
                }
                // Gone meanwhile, protected meanwhile, …: the next pass sees the new state.
                Err(e) => warn!(branch = %b.name, error = %e, "cannot delete expired branch"),
            }
        }
        Ok(deleted)
    }
}

/// An expiry must lie in the future.
pub(crate) fn check_future(t: DateTime<Utc>, now: DateTime<Utc>) -> Result<(), LifecycleError> {
    if t <= now {
        return Err(LifecycleError::Invalid(format!(
            "expiry {} is not in the future (now is {}); use a duration like 2h or a later RFC 3339 time",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(())
}
