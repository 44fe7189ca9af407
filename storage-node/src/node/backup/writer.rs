//! One writer per repository prefix. Two storage nodes archiving into the same prefix
//! (a value copied between clusters, two data directories given the same bucket) would
//! interleave their timelines' records and race on pgBackRest's stanzas; a node
//! recovering from a prefix another live node still writes would fork that node's
//! history under the same ids.
//!
//! `ramify/writer.json` names the node that writes the prefix: its name (the StatefulSet
//! Pod and namespace, or the host), its incarnation (a random id made with its data
//! directory: a node on a replaced volume is a new incarnation of the same name), when it
//! claimed the prefix, and a heartbeat it renews every `every` seconds from a task of its
//! own. A node claims the prefix before it recovers or archives anything:
//! * nobody, or this very node (same name, same incarnation: a restart): claimed;
//! * another name whose heartbeat is recent by its own clock: refused at once, naming it;
//! * otherwise (the same name on a new volume — a replacement — or a writer that looks
//!   abandoned): silent for six of its heartbeat intervals by its own clock, it is gone;
//!   if not, the claimant watches the record for three intervals by its own monotonic
//!   clock. Renewed meanwhile, the writer is alive and the claim is refused (a twin
//!   cluster whose storage Pods have the same names, say); silent, it is gone and the
//!   prefix is taken over.
//!
//! A running node that finds another incarnation's record at its heartbeat compares
//! claims: the newer claim wins. The older claimant is fenced (it stops archiving, every
//! durable timeline reporting why); the newer one writes its record back.

use serde::{Deserialize, Serialize};

use super::*;

/// Where the writer record lives under the prefix.
const WRITER_KEY: &str = "ramify/writer.json";
const WRITER_FORMAT: u32 = 1;
/// How often a running node renews its claim by default.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// A writer of another name whose heartbeat (by its clock) is older than this may be
/// gone: the claimant then watches it before taking over.
const ABANDONED_AFTER: Duration = Duration::from_secs(300);
/// Heartbeat intervals a writer must stay silent before another node takes over.
const SILENT_BEATS: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WriterRecord {
    format: u32,
    node: String,
    incarnation: String,
    claimed_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    /// Its heartbeat interval, in seconds: how long others wait for it.
    every_secs: u64,
}

/// This node's claim on the prefix.
pub(super) struct Writer {
    record: StdMutex<WriterRecord>,
    /// Set once a newer claim took the prefix over: why this node stopped.
    fenced: StdMutex<Option<String>>,
}

impl Node {
    /// Claims the repository prefix for this node (named `node_name`), renewing the
    /// claim every `heartbeat` from then on; see the module's rules. Call it after
    /// [`Node::set_backup`] and before recovering or archiving.
    pub async fn claim_backup_repo(
        &self,
        node_name: &str,
        heartbeat: Duration,
    ) -> Result<(), NodeError> {
        let b = self
            .backups
            .get()
            .ok_or_else(|| NodeError::Conflict("this node has no backup repository".into()))?
            .clone();
        let _ = b.claim_as.set((node_name.to_string(), heartbeat));
        let incarnation = self.incarnation()?;
        if let Some(w) = read_writer(&b.bucket).await? {
            let mine = w.node == node_name && w.incarnation == incarnation;
            if !mine {
                wait_out(&b, &w, node_name).await?;
            }
        }
        let now = Utc::now();
        let me = Writer {
            record: StdMutex::new(WriterRecord {
                format: WRITER_FORMAT,
                node: node_name.to_string(),
                incarnation,
                claimed_at: now,
                heartbeat_at: now,
                every_secs: heartbeat.as_secs().max(1),
            }),
            fenced: StdMutex::new(None),
        };
        write_writer(&b.bucket, &me).await?;
        if b.writer.set(me).is_err() {
            return Err(NodeError::Conflict(
                "the backup repository is already claimed".into(),
            ));
        }
        info!(node = %node_name, "claimed the backup repository prefix");
        let hb = b.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(heartbeat).await;
                if hb.keep_claim().await.is_some() {
                    return;
                }
            }
        });
        Ok(())
    }

    /// [`Node::claim_backup_repo`] at start-up: a bucket that does not answer is only
    /// logged unless the node is about to recover from it (the backup loop makes the
    /// claim later; nothing is archived before); a refusal always stops the start.
    pub async fn claim_backup_repo_at_start(
        &self,
        node_name: &str,
        heartbeat: Duration,
        recovering: bool,
    ) -> Result<(), NodeError> {
        match self.claim_backup_repo(node_name, heartbeat).await {
            Err(NodeError::Backup(e)) if !recovering => {
                warn!(error = %e, "cannot claim the backup repository prefix yet; nothing is archived until it answers");
                Ok(())
            }
            r => r,
        }
    }

    /// The random id of this data directory, made on first use.
    fn incarnation(&self) -> Result<String, NodeError> {
        let dir = self.layout.root().join("backup");
        let path = dir.join("incarnation");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_op(format!("read {}", path.display()))(e)),
        }
        let id = uuid::Uuid::new_v4().to_string();
        let tmp = dir.join("incarnation.tmp");
        std::fs::write(&tmp, format!("{id}\n"))
            .map_err(io_op(format!("write {}", tmp.display())))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_op(format!("sync {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io_op(format!("rename {}", path.display())))?;
        fsync_dir(&dir)?;
        Ok(id)
    }
}

/// Waits until writer `w` is known to be gone (silent for [`SILENT_BEATS`] of its
/// intervals, by this node's clock), or refuses when it is alive.
async fn wait_out(b: &Backups, w: &WriterRecord, node_name: &str) -> Result<(), NodeError> {
    let alive = |how: &str| {
        NodeError::Conflict(format!(
            "the backup repository {} is written by another storage node, {} (incarnation {}, {how}): two nodes writing one prefix would tear each other's archives. Give this node a prefix of its own{}",
            b.repo().describe(),
            w.node,
            w.incarnation,
            if w.node == node_name {
                " (a node of the same name runs elsewhere: a second cluster or data directory given the same bucket and prefix?)".to_string()
            } else {
                format!(
                    "; if {} is gone for good, start this one again once it has been silent for {} minutes",
                    w.node,
                    ABANDONED_AFTER.as_secs() / 60
                )
            }
        ))
    };
    let by_its_clock = (Utc::now() - w.heartbeat_at).to_std().unwrap_or_default();
    if w.node != node_name && by_its_clock < ABANDONED_AFTER {
        return Err(alive(&format!(
            "heartbeat {} s ago",
            by_its_clock.as_secs()
        )));
    }
    let window = Duration::from_secs(w.every_secs.max(1)) * SILENT_BEATS;
    // Silent for twice that by its own clock: gone, unless the clocks disagree by more
    // than the window (they do not, under NTP).
    if by_its_clock >= window * 2 {
        warn!(previous = %w.node, incarnation = %w.incarnation, silent_secs = by_its_clock.as_secs(), "taking the backup repository prefix over from a writer long silent");
        return Ok(());
    }
    if w.node == node_name {
        warn!(node = %node_name, previous = %w.incarnation, wait_secs = window.as_secs(), "this node replaces an earlier incarnation of itself in the backup repository (a new volume); making sure that one is gone first");
    } else {
        warn!(previous = %w.node, wait_secs = window.as_secs(), "the backup repository's writer looks abandoned; making sure before taking over");
    }
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match read_writer(&b.bucket).await? {
            Some(now) if now == *w => {}
            _ => return Err(alive("it renewed its claim just now")),
        }
    }
    warn!(previous = %w.node, "taking the backup repository prefix over");
    Ok(())
}

impl Backups {
    /// The name this node claims the prefix under, once it tried; `None` for a node that
    /// never claims (tests of the archiving alone).
    pub(super) fn claim_name(&self) -> Option<(String, Duration)> {
        self.claim_as.get().cloned()
    }

    /// Whether the claim is made and still this node's; `Err` says why not.
    pub(super) fn may_write(&self) -> Result<(), NodeError> {
        match self.writer.get() {
            None if self.claim_name().is_some() => Err(NodeError::Conflict(
                "the backup repository prefix is not claimed yet".into(),
            )),
            None => Ok(()),
            Some(w) => match w.fenced.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                Some(why) => Err(NodeError::Conflict(why)),
                None => Ok(()),
            },
        }
    }

    /// Renews the claim; finds out whether a newer claim took over. Returns why this
    /// node must stop writing, if it must.
    async fn keep_claim(&self) -> Option<String> {
        let w = self.writer.get()?;
        if let Err(NodeError::Conflict(why)) = self.may_write() {
            return Some(why);
        }
        let mine = w.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match read_writer(&self.bucket).await {
            Ok(Some(r)) if r.incarnation != mine.incarnation || r.node != mine.node => {
                if r.claimed_at >= mine.claimed_at {
                    let why = format!(
                        "storage node {} (incarnation {}) took this backup repository over at {}; this node no longer writes to it",
                        r.node,
                        r.incarnation,
                        r.claimed_at.to_rfc3339()
                    );
                    warn!(error = %why, "stopped archiving");
                    *w.fenced.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
                    return Some(why);
                }
                // An older claimant wrote over ours (its heartbeat raced our claim): ours
                // stands, and it finds out at its next heartbeat.
                warn!(other = %r.node, "an older claim of the backup repository overwrote this node's; writing it back");
            }
            Ok(_) => {}
            // An unreachable bucket fails the pushes too; the claim is renewed later.
            Err(_) => return None,
        }
        w.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .heartbeat_at = Utc::now();
        let _ = write_writer(&self.bucket, w).await;
        None
    }
}

/// The name a node claims a prefix under by default: the host's (a Pod's own name on
/// Kubernetes).
pub fn host_name() -> Result<String, NodeError> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(io_op("read /proc/sys/kernel/hostname"))?;
    Ok(name.trim().to_string())
}

async fn read_writer(bucket: &Bucket) -> Result<Option<WriterRecord>, NodeError> {
    let Some(body) = bucket.get(WRITER_KEY).await? else {
        return Ok(None);
    };
    match serde_json::from_slice::<WriterRecord>(&body) {
        Ok(r) if r.format == WRITER_FORMAT => Ok(Some(r)),
        _ => Err(NodeError::Conflict(format!(
            "{WRITER_KEY} in the backup repository is not a writer record this node reads: the prefix holds something else"
        ))),
    }
}

async fn write_writer(bucket: &Bucket, w: &Writer) -> Result<(), NodeError> {
    let r = w.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let body = serde_json::to_vec_pretty(&r).map_err(|e| NodeError::Conflict(e.to_string()))?;
    Ok(bucket.put(WRITER_KEY, body).await?)
}
