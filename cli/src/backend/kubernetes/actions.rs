//! Verbs on an existing branch that the operator carries out: wake and suspend (an
//! annotation), reset and restore (a BranchRestore), protect, expire and move (its spec) —
//! each written, then waited for.

use super::*;

impl Kube {
    /// Runs one BranchRestore to its end.
    pub(super) async fn run_restore(
        &self,
        branch: &str,
        kind: &str,
        source: RestoreSource,
        keep_backup: Option<bool>,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(branch).await?;
        if b.is_protected() {
            bail!(
                "branch {branch} is protected: {kind} is refused; unprotect it first: {} branch unprotect {branch} -n {}",
                self.program, self.namespace
            );
        }
        let name = format!("{branch}-{kind}-{}", Utc::now().format("%Y%m%dt%H%M%Sz"));
        let r: BranchRestore = serde_json::from_value(json!({
            "apiVersion": "ramify.dev/v1alpha1",
            "kind": "BranchRestore",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"branch": branch, "source": source, "keepBackup": keep_backup},
        }))?;
        if let Err(e) = self
            .api::<BranchRestore>()
            .create(&PostParams::default(), &r)
            .await
        {
            return Err(self.fail(e, self.op("create", RESTORES), None).await);
        }
        let (r, _) = self
            .wait_for::<BranchRestore, _>(
                RESTORES,
                &name,
                Duration::from_secs(timeout),
                |r| view::restore_finished(r).map(|_| Ok(r.clone())),
                view::restore_progress,
            )
            .await
            .with_context(|| format!("BranchRestore {name}"))?;
        if view::restore_finished(&r) == Some(false) {
            bail!(
                "{kind} of branch {branch} failed, nothing was changed: {}",
                view::restore_progress(&r)
            );
        }
        let uri = self.secret_conn(&b).await.ok().map(|c| c.uri);
        let text = view::restore_done(&r, kind == "reset", uri.as_deref());
        Ok(Shown::new(r, text))
    }

    /// Asks the operator for a compute state through `annotation` and waits until it has
    /// removed it.
    pub(super) async fn request_compute(
        &self,
        name: &str,
        annotation: &str,
        other: &str,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(name).await?;
        self.require_ready(&b)?;
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.patch_branch(
            name,
            json!({"metadata": {"annotations": {annotation: now, other: null}}}),
        )
        .await?;
        let verb = if annotation == WAKE_REQUEST {
            "wake"
        } else {
            "suspend"
        };
        let (b, _) = self
            .wait_for::<DatabaseBranch, _>(
                BRANCHES,
                name,
                Duration::from_secs(timeout),
                |b| (!b.annotations().contains_key(annotation)).then(|| Ok(b.clone())),
                |b| format!("operator to {verb} it: {}", view::progress(b)),
            )
            .await
            .map_err(|e| anyhow!("the operator did not {verb} branch {name}: {e}"))?;
        let text = view::state_line(&b);
        Ok(Shown::new(b, text))
    }

    /// Sets or clears `spec.protected` (protecting clears any expiry).
    pub(super) async fn protect_branch(
        &self,
        name: &str,
        protected: bool,
    ) -> anyhow::Result<Shown> {
        let before = self.get_branch_obj(name).await?;
        let patch = if protected {
            json!({"spec": {"protected": true, "expiresAt": null, "ttl": null}})
        } else {
            json!({"spec": {"protected": false}})
        };
        let b = self.patch_branch(name, patch).await?;
        let cleared = before
            .status
            .as_ref()
            .and_then(|s| s.expires_at)
            .or(before.spec.expires_at);
        let text = match (protected, cleared) {
            (true, Some(t)) => format!(
                "protected branch {name}: delete, reset, restore and expiry are refused (its expiry at {} was removed)\n",
                crate::render::timestamp_secs(t)
            ),
            (true, None) => format!("protected branch {name}: delete, reset, restore and expiry are refused\n"),
            (false, _) => format!("branch {name} is no longer protected\n"),
        };
        Ok(Shown::new(b, text))
    }

    /// Sets or clears the branch's expiry.
    pub(super) async fn expire_branch(&self, args: &ExpireArgs) -> anyhow::Result<Shown> {
        let name = &args.name;
        let before = self.get_branch_obj(name).await?;
        if before.is_protected() && !args.never {
            bail!(
                "branch {name} is protected, so it cannot expire: unprotect it first: {} branch unprotect {name} -n {}",
                self.program, self.namespace
            );
        }
        let now = Utc::now();
        let request = crate::commands::branch::expire_request(args, now);
        let at = match request.expiry {
            Some(ramify_lifecycle::Expiry::At(t)) => Some(t),
            _ => None,
        };
        let b = self
            .patch_branch(name, json!({"spec": {"expiresAt": at, "ttl": null}}))
            .await?;
        let text = match at {
            Some(t) => format!(
                "branch {name} expires at {} (in {}); the operator then deletes it with its compute and storage\n",
                crate::render::timestamp_secs(t),
                crate::render::expiry_left(false, Some(t), now)
            ),
            None => format!("branch {name} never expires\n"),
        };
        Ok(Shown::new(b, text))
    }

    /// Moves the branch to another storage node (`spec.storageNode`) and, unless
    /// `--no-wait`, waits until it is there with its old node's copy deleted.
    pub(super) async fn move_to(&self, args: &MoveArgs) -> anyhow::Result<Shown> {
        let name = &args.name;
        let to = &args.storage_node;
        let b = self.get_branch_obj(name).await?;
        let on = b
            .status
            .as_ref()
            .and_then(|s| s.timeline.as_ref())
            .map(|t| t.storage_node.clone());
        if on.as_deref() == Some(to.as_str()) && b.spec.storage_node.as_deref() == Some(to) {
            let text = format!("branch {name} is on storage node {to} already\n");
            return Ok(Shown::new(b, text));
        }
        self.patch_branch(name, json!({"spec": {"storageNode": to}}))
            .await?;
        if args.no_wait {
            let text = format!(
                "branch {name} is moving to storage node {to}; follow it with: {} branch get {name} -n {}\n",
                self.program, self.namespace
            );
            return Ok(Shown::new(self.get_branch_obj(name).await?, text));
        }
        let (b, took) = self
            .wait_for::<DatabaseBranch, _>(
                BRANCHES,
                name,
                Duration::from_secs(args.timeout),
                |b| move_finished(b, to),
                |b| format!("move to {to}: {}", view::progress(b)),
            )
            .await
            .map_err(|e| anyhow!("branch {name} did not move to storage node {to}: {e}"))?;
        let text = format!(
            "branch {name} moved from storage node {} to {to} in {:.1} s, with every commit; same Secret, Service and password; it starts there on the next connection\n",
            on.as_deref().unwrap_or("?"),
            took.as_secs_f64()
        );
        Ok(Shown::new(b, text))
    }
}

/// Whether a move to `to` is done: the branch Ready there with nothing left of the move,
/// or refused (the Ready condition says why; the branch stays where it is).
fn move_finished(b: &DatabaseBranch, to: &str) -> Option<anyhow::Result<DatabaseBranch>> {
    let st = b.status.as_ref()?;
    let there = st.timeline.as_ref().is_some_and(|t| t.storage_node == to);
    if there && st.moving.is_none() && st.phase == Some(Phase::Ready) {
        return Some(Ok(b.clone()));
    }
    if st.phase == Some(Phase::Failed) {
        let why = st
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map_or_else(String::new, |c| format!("{}: {}", c.reason, c.message));
        return Some(Err(anyhow!("refused ({why})")));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn branch(on: &str, moving: bool, phase: &str, reason: &str) -> DatabaseBranch {
        serde_json::from_value(json!({
            "apiVersion": "ramify.dev/v1alpha1",
            "kind": "DatabaseBranch",
            "metadata": {"name": "main", "namespace": "ns"},
            "spec": {"storageNode": "n1"},
            "status": {
                "phase": phase,
                "timeline": {"id": "t", "name": "tl-t", "storageNode": on},
                "moving": moving.then(|| json!({"from": "n0", "to": "n1"})),
                "conditions": [{"type": "Ready", "status": "False", "reason": reason,
                    "message": "why", "lastTransitionTime": "2026-12-07T00:00:00Z"}],
            }
        }))
        .unwrap()
    }

    #[test]
    fn a_move_is_done_once_the_branch_is_ready_on_its_new_node_and_nothing_is_left() {
        assert!(move_finished(&branch("n0", true, "Ready", "Moving"), "n1").is_none());
        // On the new node, the old copy not yet deleted.
        assert!(move_finished(&branch("n1", true, "Ready", "Ready"), "n1").is_none());
        assert!(matches!(
            move_finished(&branch("n1", false, "Ready", "Ready"), "n1"),
            Some(Ok(_))
        ));
        let refused = move_finished(&branch("n0", false, "Failed", "MoveRefused"), "n1");
        assert!(
            matches!(&refused, Some(Err(e)) if e.to_string().contains("MoveRefused: why")),
            "{refused:?}"
        );
    }
}
