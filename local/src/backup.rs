//! Local mode with a backup repository (`ramify local up --backup s3://…`): the in-process
//! storage node keeps durable branches' timelines in the bucket, and the daemon keeps its
//! branch records (names, ports, passwords) there too, so `ramify local up --recover` on an
//! empty data directory brings the branches back as they were.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use ramify_storage::backup::Repo;
use ramify_storage::node::Node;
use tracing::{info, warn};

use crate::files;

/// The backup repository of a local daemon.
#[derive(Debug, Clone)]
pub struct LocalBackup {
    pub repo: Repo,
    /// Rebuild, before serving, every durable branch this data directory lacks.
    pub recover: bool,
}

/// The branch records in the repository (sealed when it is encrypted).
const BRANCHES_OBJECT: &str = "local/branches.json";
/// How often a change of the branch records is uploaded.
const UPLOAD_EVERY: Duration = Duration::from_secs(2);
/// A new base backup after this much WAL since the last.
const FULL_AFTER_WAL_BYTES: u64 = 1 << 30;

/// Gives the node its repository and, with `recover`, restores the branch records and
/// every durable timeline first. Runs before the lifecycle reads the branch records.
pub async fn start(node: &Arc<Node>, data_dir: &Path, b: &LocalBackup) -> anyhow::Result<()> {
    let described = b.repo.describe();
    node.set_backup(
        b.repo.clone(),
        ramify_storage::backup::find_pgbackrest()?,
        FULL_AFTER_WAL_BYTES,
    )?;
    match node.check_backup_repo().await {
        Ok(()) => info!(repository = %described, "backup repository reachable"),
        Err(e) if b.recover => {
            return Err(e).with_context(|| format!("cannot recover from {described}"))
        }
        Err(e) => {
            warn!(error = %e, "the backup repository does not answer; durable branches keep their WAL here until it does")
        }
    }
    // One writer per prefix: this machine's name (a recovery onto a new data directory
    // on the same machine replaces the lost one).
    let name = ramify_storage::node::host_name()?;
    node.claim_backup_repo_at_start(&name, ramify_storage::node::HEARTBEAT_EVERY, b.recover)
        .await
        .with_context(|| format!("cannot use {described}"))?;
    if b.recover {
        recover(node, data_dir, &described).await?;
    }
    node.spawn_backups(Duration::from_secs(1));
    Ok(())
}

async fn recover(node: &Arc<Node>, data_dir: &Path, described: &str) -> anyhow::Result<()> {
    let state = files::state_path(data_dir);
    if state.exists() {
        bail!(
            "--recover rebuilds a lost data directory, but {} already has branch records ({}); start without --recover, or recover into an empty directory",
            data_dir.display(),
            state.display()
        );
    }
    let Some(records) = node.get_repo_object(BRANCHES_OBJECT).await? else {
        bail!("{described} holds no local-mode branches (ramify/{BRANCHES_OBJECT})");
    };
    serde_json::from_slice::<serde_json::Value>(&records)
        .with_context(|| format!("ramify/{BRANCHES_OBJECT} in {described} is not valid JSON"))?;
    let t0 = std::time::Instant::now();
    let r = node
        .recover_from_backup()
        .await
        .with_context(|| format!("recovery from {described} failed"))?;
    if !r.failed.is_empty() {
        // The branch records are not written: a branch whose timeline failed now (a
        // bucket answering 503) must not be forgotten. `--recover` again retries what
        // is missing; what came back stays.
        let list: Vec<String> = r
            .failed
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        bail!(
            "{} timeline(s) could not be recovered from {described} (the others are back; run `ramify local up --recover` again to retry):\n  {}",
            r.failed.len(),
            list.join("\n  ")
        );
    }
    // The records go in last: a crash before this leaves the directory without them, and
    // --recover again finds the timelines already there.
    write_private(&state, &records)?;
    info!(
        restored = r.restored.len(),
        forked_again = r.refork.len(),
        failed = r.failed.len(),
        elapsed_ms = t0.elapsed().as_millis() as u64,
        "recovered from the backup repository"
    );
    Ok(())
}

/// Writes `data` to `path` (mode 0600) through a temporary file and a rename.
fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.recovering");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Uploads the branch records whenever they change (every [`UPLOAD_EVERY`] at most).
/// A branch whose timeline is not durable is recorded too; a recovery leaves it out,
/// since its timeline does not come back (see [`drop_unrecovered`]).
pub fn spawn_branch_upload(node: Arc<Node>, data_dir: &Path) {
    let state = files::state_path(data_dir);
    tokio::spawn(async move {
        let mut last: Option<Vec<u8>> = None;
        let mut t = tokio::time::interval(UPLOAD_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            let Ok(now) = std::fs::read(&state) else {
                continue;
            };
            if last.as_ref() == Some(&now) {
                continue;
            }
            match node.put_repo_object(BRANCHES_OBJECT, &now).await {
                Ok(()) => last = Some(now),
                Err(e) => {
                    warn!(error = %e, "cannot upload the branch records to the backup repository; retrying")
                }
            }
        }
    });
}

/// After a recovery: branches whose timeline did not come back (they were not durable)
/// are removed from the records, each logged.
pub async fn drop_unrecovered(
    lifecycle: &ramify_lifecycle::Lifecycle<crate::runtime::LocalRuntime>,
    storage: &ramify_api::StorageClient,
) -> anyhow::Result<()> {
    let present: std::collections::HashSet<_> = storage
        .list_timelines()
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    for b in lifecycle.branches()? {
        if !present.contains(&b.timeline) {
            warn!(branch = %b.name, timeline = %b.timeline, "branch not recovered: it was not kept in the backup repository (create forks with --backup to keep them)");
            lifecycle.forget_branch(&b.name)?;
        }
    }
    Ok(())
}
