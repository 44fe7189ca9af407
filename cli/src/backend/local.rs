//! The local-mode backend: every verb is one call to the daemon of the data directory,
//! printed exactly as before (e2e/local parses its JSON).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use ramify_lifecycle::{BranchView, ComputeStatus, CreateBranch, HistoryPoint, UpdateBranch};
use ramify_local::{DaemonClient, DaemonError};
use serde::Serialize;

use super::{Backend, BranchRow, Conn, Listing, Reach, Shown};
use crate::args::{CreateArgs, ExpireArgs, MoveArgs, RestoreArgs, WaitArgs};
use crate::commands::branch::{create_request, expire_request, restore_request};
use crate::render;

/// Local mode of one data directory.
pub struct Local {
    pub data_dir: PathBuf,
}

/// `-o json|yaml` answer of `branch delete`.
#[derive(Debug, Serialize)]
struct Deleted {
    deleted: String,
    force: bool,
}

/// `-o json|yaml` answer of `checkpoint delete`.
#[derive(Debug, Serialize)]
struct CheckpointDeleted {
    branch: String,
    deleted: String,
}

impl Local {
    /// The running daemon's client, or the "not running: start it with …" error.
    pub fn client(&self) -> anyhow::Result<DaemonClient> {
        Ok(DaemonClient::for_data_dir(&self.data_dir)?)
    }
}

/// A local branch as a row of the tree.
pub fn row(b: &BranchView) -> BranchRow {
    BranchRow {
        namespace: None,
        name: b.name.clone(),
        parent: b.parent.clone().map(|p| (None, p)),
        state: match (b.compute, &b.following) {
            (ComputeStatus::Running, Some(f)) => render::follow_state(f),
            (ComputeStatus::Running, None) => "running".to_string(),
            (ComputeStatus::Suspended, _) => "suspended".to_string(),
        },
        fork_lsn: b.fork_lsn.map(|l| l.to_string()),
        exclusive_bytes: Some(b.exclusive_bytes),
        port: Some(b.port),
        created_at: b.created_at,
        protected: b.protected,
        expires_at: b.expires_at,
        restorable_from: b.restore_window.as_ref().and_then(|w| w.from_time),
        restorable_from_lsn: b
            .restore_window
            .as_ref()
            .and_then(|w| w.from_lsn)
            .map(|l| l.to_string()),
    }
}

fn conn(b: &BranchView, data_dir: &Path) -> Conn {
    Conn {
        name: b.name.clone(),
        host: b.host.clone(),
        port: b.port,
        user: b.user.clone(),
        password: b.password.clone(),
        database: b.database.clone(),
        uri: tls_uri(&b.uri, &ramify_local::files::ca_cert_path(data_dir)),
    }
}

/// `uri` asking for TLS verified against local mode's CA (`sslmode=verify-full`,
/// `sslrootcert`), once the daemon has created that CA; `uri` itself before (a data
/// directory of an older daemon). 127.0.0.1 is in every local certificate.
pub fn tls_uri(uri: &str, ca_cert: &Path) -> String {
    if !ca_cert.exists() {
        return uri.to_string();
    }
    let root: String = ca_cert
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}sslmode=verify-full&sslrootcert={root}")
}

/// A local branch for `-o json|yaml`: the daemon's view, its URI asking for TLS, and the
/// CA certificate path clients verify with.
#[derive(Serialize)]
struct LocalBranch {
    #[serde(flatten)]
    view: BranchView,
    /// `<data>/tls/ca.crt`, when local mode has its CA.
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_cert: Option<String>,
}

impl LocalBranch {
    fn new(mut view: BranchView, data_dir: &Path) -> Self {
        let ca = ramify_local::files::ca_cert_path(data_dir);
        view.uri = tls_uri(&view.uri, &ca);
        Self {
            view,
            ca_cert: ca.exists().then(|| ca.display().to_string()),
        }
    }
}

fn state_line(b: &BranchView) -> String {
    match b.compute {
        ComputeStatus::Running => format!("branch {} is running on port {}\n", b.name, b.port),
        ComputeStatus::Suspended => format!(
            "branch {} is suspended; connecting to port {} wakes it\n",
            b.name, b.port
        ),
    }
}

#[async_trait]
impl Backend for Local {
    async fn create_branch(&self, args: CreateArgs) -> anyhow::Result<Shown> {
        // The daemon answers once the branch is ready: --wait has nothing to wait for.
        let req = create_request(args, chrono::Utc::now())?;
        let client = self.client()?;
        let create = client.create_branch(&req);
        let b = if req.follow.is_some() {
            // The initial copy of a source can take long: its progress goes to stderr.
            tokio::pin!(create);
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tokio::select! {
                    b = &mut create => break b?,
                    _ = tick.tick() => {
                        if let Ok(st) = client.status().await {
                            for c in &st.copies {
                                eprintln!("{}", render::copy_progress(c, chrono::Utc::now()));
                            }
                        }
                    }
                }
            }
        } else {
            create.await?
        };
        let b = LocalBranch::new(b, &self.data_dir);
        let text = render::created_branch(&b.view);
        Ok(Shown::new(b, text))
    }

    async fn list_branches(&self) -> anyhow::Result<Listing> {
        let list = self.client()?.list_branches().await?;
        Ok(Listing {
            rows: list.iter().map(row).collect(),
            empty: "no branches yet: create one with `ramify branch create main`".to_string(),
            shown: Shown::new(list, String::new()),
        })
    }

    async fn get_branch(&self, name: &str) -> anyhow::Result<Shown> {
        let b = LocalBranch::new(self.client()?.get_branch(name).await?, &self.data_dir);
        let text = render::branch_details(&b.view, chrono::Utc::now());
        Ok(Shown::new(b, text))
    }

    async fn delete_branch(
        &self,
        name: &str,
        force: bool,
        _wait: WaitArgs,
    ) -> anyhow::Result<Shown> {
        self.client()?.delete_branch(name, force).await?;
        Ok(Shown::new(
            Deleted {
                deleted: name.to_string(),
                force,
            },
            format!("deleted branch {name}\n"),
        ))
    }

    async fn connection(&self, name: &str) -> anyhow::Result<Conn> {
        Ok(conn(
            &self.client()?.get_branch(name).await?,
            &self.data_dir,
        ))
    }

    async fn reach(&self, name: &str, _local_port: u16) -> anyhow::Result<Reach> {
        let b = self.client()?.get_branch(name).await?;
        Ok(Reach {
            conn: conn(&b, &self.data_dir),
            was_suspended: b.compute == ComputeStatus::Suspended,
            forward: None,
        })
    }

    async fn wake(&self, name: &str, _timeout: u64) -> anyhow::Result<Shown> {
        let b = self.client()?.wake(name).await?;
        let text = state_line(&b);
        Ok(Shown::new(b, text))
    }

    async fn suspend(&self, name: &str, _timeout: u64) -> anyhow::Result<Shown> {
        let b = self.client()?.suspend(name).await?;
        let text = state_line(&b);
        Ok(Shown::new(b, text))
    }

    async fn reset(&self, name: &str, _timeout: u64) -> anyhow::Result<Shown> {
        let o = self.client()?.reset(name).await?;
        let text = render::reset_done(&o);
        Ok(Shown::new(o, text))
    }

    async fn restore(&self, args: &RestoreArgs) -> anyhow::Result<Shown> {
        let o = self
            .client()?
            .restore(&args.name, &restore_request(args))
            .await?;
        let text = render::restore_done(&o);
        Ok(Shown::new(o, text))
    }

    async fn protect(&self, name: &str, protected: bool) -> anyhow::Result<Shown> {
        let client = self.client()?;
        let cleared = if protected {
            client.get_branch(name).await?.expires_at
        } else {
            None
        };
        let b = client
            .update_branch(
                name,
                &UpdateBranch {
                    protected: Some(protected),
                    expiry: None,
                },
            )
            .await?;
        let text = render::protection_changed(&b, cleared);
        Ok(Shown::new(b, text))
    }

    async fn expire(&self, args: &ExpireArgs) -> anyhow::Result<Shown> {
        let now = chrono::Utc::now();
        let b = self
            .client()?
            .update_branch(&args.name, &expire_request(args, now))
            .await?;
        let text = render::expiry_changed(&b, now);
        Ok(Shown::new(b, text))
    }

    async fn move_branch(&self, args: &MoveArgs) -> anyhow::Result<Shown> {
        anyhow::bail!(
            "local mode has one storage node, so branch {} has nowhere to move (--storage-node {} is for a cluster: kubectl ramify branch move)",
            args.name,
            args.storage_node
        )
    }

    async fn create_checkpoint(
        &self,
        branch: &str,
        name: Option<&str>,
        _timeout: u64,
    ) -> anyhow::Result<Shown> {
        let c = self.client()?.create_checkpoint(branch, name).await?;
        let text = render::created_checkpoint(branch, &c);
        Ok(Shown::new(c, text))
    }

    async fn list_checkpoints(&self, branch: &str) -> anyhow::Result<Shown> {
        let list = self.client()?.list_checkpoints(branch).await?;
        let text = render::checkpoint_list(branch, &list, chrono::Utc::now());
        Ok(Shown::new(list, text))
    }

    async fn delete_checkpoint(&self, branch: &str, name: &str) -> anyhow::Result<Shown> {
        self.client()?.delete_checkpoint(branch, name).await?;
        Ok(Shown::new(
            CheckpointDeleted {
                branch: branch.to_string(),
                deleted: name.to_string(),
            },
            format!("deleted checkpoint {name} of {branch}\n"),
        ))
    }

    async fn status(&self) -> anyhow::Result<Shown> {
        let status = self.client()?.status().await?;
        let log = ramify_local::files::log_path(&self.data_dir);
        let text = render::local_status(&status, &log);
        Ok(Shown::new(status, text))
    }

    async fn parent_of(&self, name: &str) -> anyhow::Result<Option<String>> {
        Ok(self.client()?.get_branch(name).await?.parent)
    }

    async fn create_scratch(
        &self,
        name: &str,
        parent: &str,
        at: Option<&HistoryPoint>,
        ttl_secs: u64,
    ) -> anyhow::Result<()> {
        let ttl = chrono::Duration::seconds(i64::try_from(ttl_secs).unwrap_or(i64::MAX / 1000));
        self.client()?
            .create_branch(&CreateBranch {
                name: name.to_string(),
                parent: Some(parent.to_string()),
                at: at.cloned(),
                suspend_after_secs: None,
                expires_at: Some(chrono::Utc::now() + ttl),
                protected: false,
                follow: None,
                backup: None,
            })
            .await?;
        Ok(())
    }

    async fn delete_scratch(&self, name: &str) -> anyhow::Result<()> {
        let client = self.client()?;
        // Retried briefly, since the daemon may be busy.
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            match client.delete_branch(name, true).await {
                Ok(()) => return Ok(()),
                Err(DaemonError::Api { status, .. }) if status.as_u16() == 404 => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(|| anyhow::anyhow!("unknown error"), Into::into))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uri_asks_for_verify_full_once_the_ca_exists() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my data").join("ca.crt");
        let uri = "postgresql://app:pw@127.0.0.1:20001/app";
        assert_eq!(tls_uri(uri, &ca), uri);
        std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
        std::fs::write(&ca, "pem").unwrap();
        let root = ca.display().to_string().replace(' ', "%20");
        assert_eq!(
            tls_uri(uri, &ca),
            format!("{uri}?sslmode=verify-full&sslrootcert={root}")
        );
        assert_eq!(
            tls_uri(&format!("{uri}?x=1"), &ca),
            format!("{uri}?x=1&sslmode=verify-full&sslrootcert={root}")
        );
    }
}
