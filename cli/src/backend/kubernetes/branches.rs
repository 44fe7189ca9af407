//! Creating and deleting branches on a cluster.

use super::*;

impl Kube {
    pub(super) async fn create(&self, args: CreateArgs) -> anyhow::Result<Shown> {
        if args.follow.is_some() {
            anyhow::bail!(
                "--follow is for local mode; on a cluster a following root is a DatabaseBranch with spec.source.external naming a Secret that holds the source's URI (see docs/kubernetes.md)"
            );
        }
        let ns = self.namespace.clone();
        let mut at = None;
        if let Some(parent) = &args.parent {
            let p = parent_ref(parent);
            let pns = p.namespace.clone().unwrap_or_else(|| ns.clone());
            let api: Api<DatabaseBranch> = Api::namespaced(self.client.clone(), &pns);
            // A missing parent is refused here, before anything is written; a parent this
            // user may not read is left to the operator (spec.sharing decides).
            if let Err(e) = api.get(&p.name).await {
                if is_not_found(&e) {
                    let op = Op {
                        verb: "get",
                        resource: BRANCHES,
                        namespace: Some(&pns),
                    };
                    return Err(self.fail(e, op, Some(("parent branch", &p.name))).await);
                }
            }
            if let Some(point) = &args.at {
                at = self.branch_point(&pns, &p.name, point).await?;
            }
        }
        let obj = branch_object(&args, &ns, at);
        let created = match self
            .api::<DatabaseBranch>()
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(b) => b,
            Err(e) => return Err(self.fail(e, self.op("create", BRANCHES), None).await),
        };
        if !args.wait.wait {
            let text = view::created_branch(&created, None, None, &self.program);
            return Ok(Shown::new(created, text));
        }
        let (b, waited) = self
            .wait_ready(&args.name, Duration::from_secs(args.wait.timeout))
            .await?;
        let uri = self.secret_conn(&b).await.ok().map(|c| c.uri);
        let text = view::created_branch(&b, uri.as_deref(), Some(waited), &self.program);
        Ok(Shown::new(b, text))
    }

    pub(super) async fn delete(
        &self,
        name: &str,
        force: bool,
        wait: WaitArgs,
    ) -> anyhow::Result<Shown> {
        let b = self.get_branch_obj(name).await?;
        if b.is_protected() {
            bail!(
                "branch {name} is protected (spec.protected: true): unprotect it first: {} branch unprotect {name} -n {}",
                self.program, self.namespace
            );
        }
        // Children may be in any namespace (spec.sharing): look everywhere this user may,
        // else in the branch's own namespace.
        let listed = match Api::<DatabaseBranch>::all(self.client.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(l) => l.items,
            Err(_) => match self
                .api::<DatabaseBranch>()
                .list(&ListParams::default())
                .await
            {
                Ok(l) => l.items,
                Err(e) => return Err(self.fail(e, self.op("list", BRANCHES), None).await),
            },
        };
        let children: Vec<String> = listed
            .iter()
            .filter(|c| {
                c.spec.parent.as_ref().is_some_and(|p| p.name == name)
                    && c.parent_namespace().as_deref() == Some(self.namespace.as_str())
            })
            .map(|c| match c.namespace() {
                Some(ns) if ns != self.namespace => format!("{ns}/{}", c.name_any()),
                _ => c.name_any(),
            })
            .collect();
        if !children.is_empty() && !force {
            bail!(
                "branch {name} has child branches ({}): delete them first, or use --force to delete them too",
                children.join(", ")
            );
        }
        if let Err(e) = self
            .api::<DatabaseBranch>()
            .delete(name, &DeleteParams::default())
            .await
        {
            return Err(self
                .fail(e, self.op("delete", BRANCHES), Some(("branch", name)))
                .await);
        }
        if force && !children.is_empty() {
            // After the DELETE was accepted, so a refused one leaves the branch unchanged.
            self.patch_branch(
                name,
                json!({"metadata": {"annotations": {DELETE_CHILDREN_ANNOTATION: "true"}}}),
            )
            .await?;
        }
        let text = if wait.wait {
            let deadline = Instant::now() + Duration::from_secs(wait.timeout);
            let mut last = String::new();
            loop {
                match self.api::<DatabaseBranch>().get(name).await {
                    Err(e) if is_not_found(&e) => break,
                    Err(e) => {
                        return Err(from_kube(e, self.op("get", BRANCHES), &self.server).into())
                    }
                    Ok(b) => {
                        let line = view::progress(&b);
                        if Instant::now() >= deadline {
                            let warnings = self.warnings("DatabaseBranch", name).await;
                            bail!(
                                "branch {name} is still there after {}: {}",
                                humantime::format_duration(Duration::from_secs(wait.timeout)),
                                view::stuck(&b, &warnings)
                            );
                        }
                        if line != last {
                            eprintln!("waiting: {line}");
                            last = line;
                        }
                    }
                }
                tokio::time::sleep(POLL).await;
            }
            format!("deleted branch {name} in namespace {}\n", self.namespace)
        } else {
            format!(
                "deleting branch {name} in namespace {}: the operator removes its compute and storage (--wait waits for it)\n",
                self.namespace
            )
        };
        Ok(Shown::new(b, text))
    }
}
