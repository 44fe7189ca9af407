//! Creating and deleting branches on a cluster.

use super::*;

impl Kube {
    pub(super) async fn create(&self, args: CreateArgs) -> anyhow::Result<Shown> {
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
        let source = match &args.follow {
            Some(uri) => Some(self.create_source_secret(&args, uri).await?),
            None => None,
        };
        let obj = branch_object(&args, &ns, at);
        let created = match self
            .api::<DatabaseBranch>()
            .create(&PostParams::default(), &obj)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                if let Some(secret) = &source {
                    // The password is not left behind for a branch that does not exist.
                    let _ = self
                        .api::<Secret>()
                        .delete(secret, &DeleteParams::default())
                        .await;
                }
                return Err(self.fail(e, self.op("create", BRANCHES), None).await);
            }
        };
        if let Some(secret) = &source {
            self.give_to_branch(secret, &created).await?;
        }
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

    /// Writes the source URI of `branch create NAME --follow URI`, with its password
    /// (from the URI, `--password-file` or `PGPASSFILE`), into the Secret the branch's
    /// `spec.source.external` names; nothing of it is printed. An existing Secret of that
    /// name is never overwritten.
    async fn create_source_secret(&self, args: &CreateArgs, uri: &str) -> anyhow::Result<String> {
        let source = crate::follow::source(uri, args.slot.clone(), args.password_file.as_deref())?;
        let name = objects::source_secret_name(&args.name);
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), "ramify".into()),
                    ("ramify.dev/source-of".into(), args.name.clone()),
                ])),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            string_data: Some(BTreeMap::from([(
                objects::SOURCE_KEY.to_string(),
                crate::follow::with_password(&source.conninfo, source.password.as_deref()),
            )])),
            ..Default::default()
        };
        match self
            .api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await
        {
            Ok(_) => Ok(name),
            Err(e) => match from_kube(e, self.op("create", "secrets"), &self.server) {
                KubeError::AlreadyExists(_) => bail!(
                    "Secret {name} already exists in namespace {ns}: a follower's source Secret is made new, never overwritten (left by an earlier create? `kubectl delete secret {name} -n {ns}`), or choose another branch name",
                    ns = self.namespace
                ),
                other => Err(other.into()),
            },
        }
    }

    /// Makes the source Secret `secret` the branch's own, so that deleting the branch
    /// deletes it.
    async fn give_to_branch(&self, secret: &str, b: &DatabaseBranch) -> anyhow::Result<()> {
        let owner = json!({"metadata": {"ownerReferences": [{
            "apiVersion": "ramify.dev/v1alpha1",
            "kind": "DatabaseBranch",
            "name": b.name_any(),
            "uid": b.metadata.uid.clone().unwrap_or_default(),
        }]}});
        if let Err(e) = self
            .api::<Secret>()
            .patch(secret, &PatchParams::default(), &Patch::Merge(&owner))
            .await
        {
            return Err(self
                .fail(e, self.op("patch", "secrets"), Some(("Secret", secret)))
                .await);
        }
        Ok(())
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
