//! `ramify backup status|list` (local mode): the branches kept in the backup repository,
//! from what the storage node reports of each branch's timeline.

use chrono::{DateTime, Utc};
use ramify_api::{BackupInfo, BackupStatus};
use serde::Serialize;

use super::Context;
use crate::args::BackupCommand;
use crate::render::{age, human_bytes, table, timestamp_secs};

/// One branch in `-o json|yaml`: `kept` is absent for a branch not in the repository.
#[derive(Debug, Serialize)]
struct Kept<'a> {
    branch: &'a str,
    parent: Option<&'a str>,
    kept: Option<&'a BackupStatus>,
}

impl<'a> Kept<'a> {
    fn of(b: &'a ramify_lifecycle::BranchView) -> Kept<'a> {
        Kept {
            branch: &b.name,
            parent: b.parent.as_deref(),
            kept: b.kept_in.as_ref(),
        }
    }
}

pub async fn run(ctx: &Context, cmd: BackupCommand) -> anyhow::Result<()> {
    let branches = ctx.client()?.list_branches().await?;
    let now = Utc::now();
    match cmd {
        BackupCommand::Status => {
            let rows: Vec<Kept> = branches.iter().map(Kept::of).collect();
            ctx.print(&rows, || status_text(&rows, now))
        }
        BackupCommand::List { branch } => {
            if let Some(name) = &branch {
                anyhow::ensure!(
                    branches.iter().any(|b| &b.name == name),
                    "no branch named {name:?}: `ramify branch list` shows them"
                );
            }
            let rows: Vec<Kept> = branches
                .iter()
                .filter(|b| branch.as_ref().is_none_or(|n| &b.name == n))
                .map(Kept::of)
                .collect();
            ctx.print(&rows, || list_text(&rows, branch.as_deref(), now))
        }
    }
}

/// What to say when no branch is kept.
const NOTHING_KEPT: &str = "no branch is kept in a backup repository: start local mode with `ramify local up --backup s3://BUCKET/PREFIX` (roots are kept, forks created with --backup)\n";

fn status_text(rows: &[Kept], now: DateTime<Utc>) -> String {
    if rows.iter().all(|r| r.kept.is_none()) {
        return NOTHING_KEPT.to_string();
    }
    let mut out = String::new();
    let mut repos: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.kept.map(|k| k.repository.as_str()))
        .collect();
    repos.sort_unstable();
    repos.dedup();
    for r in repos {
        out.push_str(&format!("repository: {r}\n"));
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| match r.kept {
            None => vec![
                r.branch.to_string(),
                "not kept".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            Some(k) => vec![
                r.branch.to_string(),
                match (&k.error, k.healthy) {
                    (Some(e), _) => format!("FAILING: {e}"),
                    (None, true) => "ok".into(),
                    (None, false) => "not yet".into(),
                },
                match (&k.archived_to, k.archived_at) {
                    (Some(w), Some(t)) => format!("{w} ({} ago)", age(t, now)),
                    _ => "none yet".into(),
                },
                human_bytes(k.backlog_bytes),
                match &k.newest_backup {
                    Some(n) => format!("{} ({} ago)", n.set, age(n.time, now)),
                    None => "parent's".into(),
                },
            ],
        })
        .collect();
    out.push_str(&table(
        &[
            "BRANCH",
            "ARCHIVING",
            "WAL IN THE BUCKET",
            "WAITING",
            "NEWEST BACKUP",
        ],
        &lines,
    ));
    out
}

fn list_text(rows: &[Kept], only: Option<&str>, now: DateTime<Utc>) -> String {
    let kept: Vec<&Kept> = rows.iter().filter(|r| r.kept.is_some()).collect();
    if kept.is_empty() {
        return match only {
            Some(b) => format!("{b} is not kept in the backup repository (a fork is kept only when created with --backup)\n"),
            None => NOTHING_KEPT.to_string(),
        };
    }
    let mut lines: Vec<Vec<String>> = Vec::new();
    for r in kept {
        let k = r.kept.expect("filtered");
        if k.backups.is_empty() {
            lines.push(vec![
                r.branch.to_string(),
                match r.parent {
                    Some(p) => format!("none of its own: {p}'s and its own WAL"),
                    None => "none yet".into(),
                },
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for b in &k.backups {
            lines.push(set_row(r.branch, b, now));
        }
    }
    table(&["BRANCH", "SET", "SNAPSHOT", "LSN", "TIME (AGE)"], &lines)
}

fn set_row(branch: &str, b: &BackupInfo, now: DateTime<Utc>) -> Vec<String> {
    vec![
        branch.to_string(),
        b.set.clone(),
        b.snapshot.clone(),
        b.lsn.to_string(),
        format!("{} ({})", timestamp_secs(b.time), age(b.time, now)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(healthy: bool, backups: usize) -> BackupStatus {
        let t = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sets: Vec<BackupInfo> = (0..backups)
            .map(|i| BackupInfo {
                set: format!("20261207-10000{i}F"),
                snapshot: format!("periodic-{i}"),
                lsn: "0/3000000".parse().unwrap(),
                time: t,
            })
            .collect();
        BackupStatus {
            repository: "s3://bank/laptop at localhost:9000".into(),
            healthy,
            error: (!healthy).then(|| "the repository does not answer".into()),
            archived_to: Some("000000010000000000000003".into()),
            archived_at: Some(t),
            backlog_bytes: if healthy { 0 } else { 32 << 20 },
            newest_backup: sets.last().cloned(),
            backups: sets,
        }
    }

    fn kept<'a>(
        branch: &'a str,
        parent: Option<&'a str>,
        kept: Option<&'a BackupStatus>,
    ) -> Kept<'a> {
        Kept {
            branch,
            parent,
            kept,
        }
    }

    #[test]
    fn status_names_failures_and_branches_not_kept() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:01:30Z")
            .unwrap()
            .with_timezone(&Utc);
        let (main, dev) = (status(true, 1), status(false, 0));
        let rows = [
            kept("main", None, Some(&main)),
            kept("dev", Some("main"), Some(&dev)),
            kept("scratch", Some("main"), None),
        ];
        let text = status_text(&rows, now);
        assert!(
            text.starts_with("repository: s3://bank/laptop at localhost:9000\n"),
            "{text}"
        );
        let line = |b: &str| text.lines().find(|l| l.starts_with(b)).unwrap().to_string();
        assert!(line("main ").contains("ok"), "{text}");
        assert!(
            line("main ").contains("(1m30s ago)") || line("main ").contains("ago"),
            "{text}"
        );
        assert!(
            line("dev ").contains("FAILING: the repository does not answer"),
            "{text}"
        );
        assert!(
            line("dev ").contains("32.0 MiB") || line("dev ").contains("32"),
            "{text}"
        );
        assert!(line("dev ").contains("parent's"), "{text}");
        assert!(line("scratch ").contains("not kept"), "{text}");
        assert_eq!(status_text(&rows[2..], now), NOTHING_KEPT);
    }

    #[test]
    fn list_shows_every_set_and_forks_without_their_own() {
        let now = Utc::now();
        let (main, dev) = (status(true, 2), status(true, 0));
        let rows = [
            kept("main", None, Some(&main)),
            kept("dev", Some("main"), Some(&dev)),
        ];
        let text = list_text(&rows, None, now);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("main ")).count(),
            2,
            "{text}"
        );
        assert!(
            text.contains("none of its own: main's and its own WAL"),
            "{text}"
        );
        let scratch = [kept("scratch", Some("main"), None)];
        assert!(list_text(&scratch, Some("scratch"), now).contains("scratch is not kept"));
    }
}
