//! Checkpoints on a cluster: BranchCheckpoint objects the operator takes.

use super::*;

impl Kube {
    pub(super) async fn checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
        timeout: u64,
    ) -> anyhow::Result<Shown> {
        self.get_branch_obj(branch).await?;
        let api = self.api::<BranchCheckpoint>();
        let name = match name {
            Some(n) => n.to_string(),
            None => match api.list(&ListParams::default()).await {
                Ok(l) => view::next_checkpoint_name(
                    l.items
                        .iter()
                        .map(|c| c.metadata.name.as_deref().unwrap_or_default()),
                ),
                Err(e) => return Err(self.fail(e, self.op("list", CHECKPOINTS), None).await),
            },
        };
        let mut cp = BranchCheckpoint::new(
            &name,
            ramify_crd::BranchCheckpointSpec {
                branch: branch.to_string(),
            },
        );
        cp.metadata.namespace = Some(self.namespace.clone());
        cp.metadata.annotations = None;
        if let Err(e) = api.create(&PostParams::default(), &cp).await {
            return Err(self.fail(e, self.op("create", CHECKPOINTS), None).await);
        }
        let (cp, _) = self
            .wait_for::<BranchCheckpoint, _>(
                CHECKPOINTS,
                &name,
                Duration::from_secs(timeout),
                |c| view::checkpoint_finished(c).map(|_| Ok(c.clone())),
                |c| {
                    let st = c.status.as_ref();
                    format!(
                        "checkpoint {}: {}",
                        c.name_any(),
                        view::conditions(st.map_or(&[][..], |s| &s.conditions[..]))
                    )
                },
            )
            .await
            .with_context(|| format!("checkpoint {name} of {branch}"))?;
        if view::checkpoint_finished(&cp) == Some(false) {
            let st = cp.status.as_ref();
            bail!(
                "checkpoint {name} of {branch} failed: {}",
                view::conditions(st.map_or(&[][..], |s| &s.conditions[..]))
            );
        }
        let text = view::created_checkpoint(&cp, &self.program);
        Ok(Shown::new(cp, text))
    }

    pub(super) async fn checkpoints(&self, branch: &str) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(branch).await?;
        let list: Vec<BranchCheckpoint> = match self
            .api::<BranchCheckpoint>()
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l
                .items
                .into_iter()
                .filter(|c| c.spec.branch == branch)
                .collect(),
            Err(e) => return Err(self.fail(e, self.op("list", CHECKPOINTS), None).await),
        };
        let timeline = b
            .status
            .as_ref()
            .and_then(|s| s.timeline.as_ref())
            .map(|t| t.id.clone());
        let text = view::checkpoint_list(
            branch,
            &list,
            timeline.as_deref(),
            Utc::now(),
            &self.program,
        );
        Ok(Shown::new(Self::list_value(&list)?, text))
    }

    pub(super) async fn drop_checkpoint(&self, branch: &str, name: &str) -> anyhow::Result<Shown> {
        let api = self.api::<BranchCheckpoint>();
        let cp = match api.get(name).await {
            Ok(c) => c,
            Err(e) => {
                return Err(self
                    .fail(e, self.op("get", CHECKPOINTS), Some(("checkpoint", name)))
                    .await)
            }
        };
        if cp.spec.branch != branch {
            bail!(
                "checkpoint {name} is of branch {}, not {branch}: nothing was deleted",
                cp.spec.branch
            );
        }
        if let Err(e) = api.delete(name, &DeleteParams::default()).await {
            return Err(self
                .fail(
                    e,
                    self.op("delete", CHECKPOINTS),
                    Some(("checkpoint", name)),
                )
                .await);
        }
        Ok(Shown::new(
            cp,
            format!("deleted checkpoint {name} of {branch}\n"),
        ))
    }
}
