//! What the CLI prints, as pure functions of the daemon's answers: the branch tree, tables,
//! human-readable bytes and ages, and JSON/YAML.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use ramify_api::{CloneMethod, SnapshotInfo, SnapshotKind};
use ramify_lifecycle::{BranchView, CheckpointView, ComputeStatus, LocalStatus, RestoreOutcome};
use serde::Serialize;

use crate::args::OutputFormat;
use crate::backend::BranchRow;

/// `value` as JSON (pretty) or YAML; `None` for the table format, which each command
/// renders its own way.
pub fn structured<T: Serialize>(format: OutputFormat, value: &T) -> anyhow::Result<Option<String>> {
    Ok(match format {
        OutputFormat::Table | OutputFormat::Wide => None,
        OutputFormat::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        OutputFormat::Yaml => Some(serde_yaml::to_string(value)?),
    })
}

/// Bytes in binary units with one decimal: `0 B`, `512 B`, `1.5 KiB`, `24.1 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A duration as the two largest units, kubectl style: `42s`, `5m`, `3h12m`, `2d4h`.
pub fn human_age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (d, h, m) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60);
    match s {
        0..=59 => format!("{s}s"),
        60..=599 => match s % 60 {
            0 => format!("{m}m"),
            secs => format!("{m}m{secs}s"),
        },
        600..=3599 => format!("{m}m"),
        3600..=86_399 => match m {
            0 => format!("{h}h"),
            _ => format!("{h}h{m}m"),
        },
        _ => match h {
            0 => format!("{d}d"),
            _ => format!("{d}d{h}h"),
        },
    }
}

/// A moment to the millisecond, in UTC (`2026-03-01T11:59:58.123Z`).
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A moment to the second, in UTC, for tables (`2026-03-01T11:59:58Z`).
pub fn timestamp_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Time since `then`, as [`human_age`].
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    human_age((now - then).num_seconds())
}

/// Left-aligned columns two spaces apart, widths counted in characters (the tree's box
/// drawing is multi-byte), no trailing spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Key/value lines with the values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("  {:<width$}  {v}\n", format!("{k}:"), width = width + 1))
        .collect()
}

/// Branches in tree order, each with the prefix that draws its place in the tree
/// (`├─ `, `└─ `, `│  ` …). Roots are branches without a parent, or whose parent is not
/// listed (gone, or in another namespace); siblings are ordered by creation time, then
/// namespace and name.
pub fn tree_order(branches: &[BranchRow]) -> Vec<(String, &BranchRow)> {
    type Key<'a> = (Option<&'a str>, &'a str);
    let keys: HashSet<Key<'_>> = branches.iter().map(BranchRow::key).collect();
    let mut children: BTreeMap<Option<Key<'_>>, Vec<&BranchRow>> = BTreeMap::new();
    for b in branches {
        let parent = b
            .parent
            .as_ref()
            .map(|(ns, name)| (ns.as_deref(), name.as_str()))
            .filter(|p| keys.contains(p));
        children.entry(parent).or_default().push(b);
    }
    for siblings in children.values_mut() {
        siblings.sort_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then(a.namespace.cmp(&b.namespace))
                .then(a.name.cmp(&b.name))
        });
    }
    let mut out = Vec::with_capacity(branches.len());
    let mut visited = HashSet::new();
    for root in children.get(&None).cloned().unwrap_or_default() {
        visit(root, "", None, &children, &mut visited, &mut out);
    }
    // A parent cycle has no root to start from; show those branches flat rather than lose them.
    for b in branches {
        if !visited.contains(&b.key()) {
            visit(b, "", None, &children, &mut visited, &mut out);
        }
    }
    out
}

type Children<'a> = BTreeMap<Option<(Option<&'a str>, &'a str)>, Vec<&'a BranchRow>>;

fn visit<'a>(
    b: &'a BranchRow,
    indent: &str,
    last: Option<bool>,
    children: &Children<'a>,
    visited: &mut HashSet<(Option<&'a str>, &'a str)>,
    out: &mut Vec<(String, &'a BranchRow)>,
) {
    if !visited.insert(b.key()) {
        return;
    }
    let (prefix, child_indent) = match last {
        None => (String::new(), String::new()),
        Some(true) => (format!("{indent}└─ "), format!("{indent}   ")),
        Some(false) => (format!("{indent}├─ "), format!("{indent}│  ")),
    };
    out.push((prefix, b));
    let kids = children
        .get(&Some(b.key()))
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, kid) in kids.iter().enumerate() {
        visit(
            kid,
            &child_indent,
            Some(i + 1 == kids.len()),
            children,
            visited,
            out,
        );
    }
}

fn state(c: ComputeStatus) -> &'static str {
    match c {
        ComputeStatus::Running => "running",
        ComputeStatus::Suspended => "suspended",
    }
}

/// One line of an initial copy's progress: `copying the source: 1.2 GiB in 14s,
/// 85.3 MiB/s`.
pub fn copy_progress(c: &ramify_api::CopyProgress, now: DateTime<Utc>) -> String {
    let ms = (now - c.started_at).num_milliseconds().max(1);
    format!(
        "copying the source: {} in {}s, {}/s",
        human_bytes(c.bytes_done),
        ms / 1000,
        human_bytes((c.bytes_done as f64 * 1000.0 / ms as f64) as u64)
    )
}

/// A running following root's state in a list: `following (lag 12 KiB, 0.3s)` while it
/// streams, `not streaming` otherwise (`branch get` says why).
pub fn follow_state(f: &ramify_api::FollowInfo) -> String {
    match &f.status {
        Some(s) if s.streaming => format!(
            "following (lag {}, {:.1}s)",
            human_bytes(s.lag_bytes.unwrap_or(0)),
            s.lag_seconds.unwrap_or(0.0)
        ),
        Some(_) => "not streaming".to_string(),
        None => "starting".to_string(),
    }
}

/// `branch get`'s line for a branch kept in the backup repository: where, whether
/// archiving works, how far it got and what waits.
fn backup_line(k: &ramify_api::BackupStatus, now: DateTime<Utc>) -> String {
    let state = match (&k.error, k.healthy) {
        (Some(e), _) => format!("FAILING: {e}"),
        (None, true) => "ok".to_string(),
        (None, false) => "not yet".to_string(),
    };
    let archived = match (&k.archived_to, k.archived_at) {
        (Some(w), Some(t)) => format!(", WAL to {w} ({} ago)", age(t, now)),
        _ => String::new(),
    };
    let backlog = if k.backlog_bytes > 0 {
        format!(", {} waiting", human_bytes(k.backlog_bytes))
    } else {
        String::new()
    };
    let base = match &k.newest_backup {
        Some(n) => format!(", base backup {} of {}", n.set, timestamp_secs(n.time)),
        None => String::new(),
    };
    format!("{state} in {}{archived}{backlog}{base}", k.repository)
}

/// The `branch get` lines of a following root: its source and replication state.
fn follow_details(f: &ramify_api::FollowInfo, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
    let mut pairs = vec![("follows", f.conninfo.clone())];
    pairs.push((
        "mode",
        match &f.publication {
            Some(p) => format!("{} (publication {p})", f.mode),
            None => f.mode.to_string(),
        },
    ));
    if let Some(slot) = &f.slot {
        pairs.push(("slot", slot.clone()));
    }
    let dash = || "-".to_string();
    match &f.status {
        None => pairs.push(("replication", "compute not running".into())),
        Some(s) => {
            pairs.push((
                "replication",
                if s.streaming {
                    "streaming"
                } else {
                    "not streaming"
                }
                .into(),
            ));
            pairs.push((
                "lag",
                format!(
                    "{} ({:.1}s)",
                    s.lag_bytes.map_or_else(dash, human_bytes),
                    s.lag_seconds.unwrap_or(0.0)
                ),
            ));
            pairs.push((
                "replayed lsn",
                s.replayed_lsn.map_or_else(dash, |l| l.to_string()),
            ));
            pairs.push((
                "last received",
                s.last_received_at.map_or_else(dash, |t| {
                    format!("{} ({} ago)", timestamp_secs(t), age(t, now))
                }),
            ));
            if let Some(p) = &s.problem {
                pairs.push(("problem", p.clone()));
            }
        }
    }
    if let Some(w) = &f.warm_standby {
        pairs.push(("warm standby", w.clone()));
    }
    pairs
}

/// When a branch is deleted by itself, as time left: `-` (never), `protected`, `1h59m`,
/// or `now` (expired; kept while it has children).
pub fn expiry_left(
    protected: bool,
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    match (protected, expires_at) {
        (true, _) => "protected".to_string(),
        (false, None) => "-".to_string(),
        (false, Some(t)) if t <= now => "now".to_string(),
        // Rounded up, so a branch never shows 0s before it is gone.
        (false, Some(t)) => human_age(((t - now).num_milliseconds() + 999) / 1000),
    }
}

/// [`expiry_left`] of a local branch.
pub fn expires(b: &BranchView, now: DateTime<Utc>) -> String {
    expiry_left(b.protected, b.expires_at, now)
}

/// `branch list`: the tree with NAME, STATE, FORK LSN, EXCLUSIVE, PORT, AGE, EXPIRES
/// (time left), the same for both backends; NAMESPACE first when the rows carry one
/// (`-A`). `empty` is printed when there are no branches.
pub fn branch_list(branches: &[BranchRow], now: DateTime<Utc>, empty: &str) -> String {
    branch_list_as(branches, now, empty, false)
}

/// `ramify branch list -o wide`: [`branch_list`] plus where each branch's restorable
/// history starts (time and LSN).
pub fn branch_list_wide(branches: &[BranchRow], now: DateTime<Utc>, empty: &str) -> String {
    branch_list_as(branches, now, empty, true)
}

fn branch_list_as(branches: &[BranchRow], now: DateTime<Utc>, empty: &str, wide: bool) -> String {
    if branches.is_empty() {
        return format!("{empty}\n");
    }
    let with_ns = branches.iter().any(|b| b.namespace.is_some());
    let dash = || "-".to_string();
    let rows: Vec<Vec<String>> = tree_order(branches)
        .into_iter()
        .map(|(prefix, b)| {
            let mut row = Vec::with_capacity(8);
            if with_ns {
                row.push(b.namespace.clone().unwrap_or_else(dash));
            }
            row.extend([
                format!("{prefix}{}", b.name),
                b.state.clone(),
                b.fork_lsn.clone().unwrap_or_else(dash),
                b.exclusive_bytes.map_or_else(dash, human_bytes),
                b.port.map_or_else(dash, |p| p.to_string()),
                age(b.created_at, now),
                expiry_left(b.protected, b.expires_at, now),
            ]);
            if wide {
                row.extend([
                    b.restorable_from.map_or_else(dash, timestamp_secs),
                    b.restorable_from_lsn.clone().unwrap_or_else(dash),
                ]);
            }
            row
        })
        .collect();
    let mut headers = vec![
        "NAME",
        "STATE",
        "FORK LSN",
        "EXCLUSIVE",
        "PORT",
        "AGE",
        "EXPIRES",
    ];
    if with_ns {
        headers.insert(0, "NAMESPACE");
    }
    if wide {
        headers.extend(["RESTORABLE FROM", "FROM LSN"]);
    }
    table(&headers, &rows)
}

/// How far back a branch can be restored or forked: `2026-03-01T10:00:00.000Z (lsn
/// 0/17414F8) to now` while its compute runs, up to its last checkpoint while it is
/// suspended (`to`); a branch without a start (a root an older release made empty, before
/// its first snapshot) says so.
pub fn restorable(
    from: (Option<DateTime<Utc>>, Option<String>),
    to: Option<(Option<DateTime<Utc>>, Option<String>)>,
) -> String {
    let point = |(t, l): (Option<DateTime<Utc>>, Option<String>)| match (t, l) {
        (Some(t), Some(l)) => format!("{} (lsn {l})", timestamp(t)),
        (Some(t), None) => timestamp(t),
        (None, Some(l)) => format!("lsn {l}"),
        (None, None) => "?".to_string(),
    };
    if from.0.is_none() && from.1.is_none() {
        return "nothing yet (a root created empty by an older release: its history starts at its first snapshot)".to_string();
    }
    match to {
        Some(to) if to.0.is_some() || to.1.is_some() => {
            format!("{} to {}", point(from), point(to))
        }
        _ => format!("{} to now", point(from)),
    }
}

/// [`restorable`] for a local branch.
fn restorable_local(b: &BranchView) -> String {
    let Some(w) = &b.restore_window else {
        return "-".to_string();
    };
    let lsn = |l: Option<ramify_api::Lsn>| l.map(|l| l.to_string());
    restorable(
        (w.from_time, lsn(w.from_lsn)),
        match b.compute {
            ComputeStatus::Running => None,
            ComputeStatus::Suspended => Some((w.to_time, lsn(w.to_lsn))),
        },
    )
}

fn fork_point(b: &BranchView) -> String {
    match (&b.fork_lsn, &b.fork_time) {
        (Some(l), Some(t)) => format!("{l} ({})", timestamp(*t)),
        (Some(l), None) => l.to_string(),
        (None, Some(t)) => timestamp(*t),
        (None, None) => "-".to_string(),
    }
}

fn suspend_after(secs: u64) -> String {
    match secs {
        0 => "never".to_string(),
        s => format!("{} idle", human_age(s as i64)),
    }
}

/// The loud line for a data directory without reflinks.
pub fn copy_mode_warning(filesystem: &str) -> String {
    format!(
        "WARNING: copy mode: forks are full copies. The data directory is on {filesystem}, \
         which has no reflinks, so every fork copies the whole database (time and space grow \
         with its size). Use XFS (mkfs.xfs -m reflink=1) or btrfs, e.g. as root: \
         ramify local up --xfs-image 8G\n"
    )
}

/// `ramify branch create`: what was created, how fast, and how to connect.
pub fn created_branch(b: &BranchView) -> String {
    if let Some(f) = &b.following {
        let mut out = match b.create_ms {
            Some(ms) => format!(
                "created root branch {} following {} in {ms} ms\n",
                b.name, f.conninfo
            ),
            None => format!("created root branch {} following {}\n", b.name, f.conninfo),
        };
        out.push_str(&fields(&[
            ("uri", b.uri.clone()),
            ("logins", "the source's own roles (read-only)".into()),
            (
                "fork it",
                format!("ramify branch create NAME --parent {} [--at …]", b.name),
            ),
        ]));
        return out;
    }
    let mut out = match (&b.parent, b.create_ms) {
        (Some(p), Some(ms)) => format!("created branch {} from {p} in {ms} ms\n", b.name),
        (Some(p), None) => format!("created branch {} from {p}\n", b.name),
        (None, Some(ms)) => format!("created empty root branch {} in {ms} ms\n", b.name),
        (None, None) => format!("created empty root branch {}\n", b.name),
    };
    let mut pairs = Vec::new();
    if b.parent.is_some() {
        pairs.push((
            "fork lsn",
            b.fork_lsn
                .map_or_else(|| "-".to_string(), |l| l.to_string()),
        ));
        pairs.push((
            "fork time",
            b.fork_time.map_or_else(|| "-".to_string(), timestamp),
        ));
    }
    pairs.push(("exclusive", human_bytes(b.exclusive_bytes)));
    pairs.push(("suspends", suspend_after(b.suspend_after_secs)));
    pairs.push(("uri", b.uri.clone()));
    out.push_str(&fields(&pairs));
    if b.parent.is_some() && b.clone_method == CloneMethod::Copy {
        out.push_str("WARNING: copy mode: this fork is a full copy of its parent (no reflinks on the data directory's filesystem)\n");
    }
    out
}

/// `ramify branch get`: every fact about one branch.
pub fn branch_details(b: &BranchView, now: DateTime<Utc>) -> String {
    let mut out = format!("{}\n", b.name);
    let pairs = vec![
        (
            "parent",
            b.parent.clone().unwrap_or_else(|| "-".to_string()),
        ),
        ("state", state(b.compute).to_string()),
        ("uri", b.uri.clone()),
        ("host", format!("{}:{}", b.host, b.port)),
        ("database", b.database.clone()),
        ("user", b.user.clone()),
        (
            "asked for",
            b.at.as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string),
        ),
        ("fork point", fork_point(b)),
        ("restorable", restorable_local(b)),
        ("logical", human_bytes(b.logical_bytes)),
        ("exclusive", human_bytes(b.exclusive_bytes)),
        ("history", human_bytes(b.history_bytes)),
        ("clone method", b.clone_method.to_string()),
        ("suspends", suspend_after(b.suspend_after_secs)),
        ("timeline", b.timeline_id.to_string()),
        (
            "created",
            format!(
                "{} ({} ago)",
                timestamp_secs(b.created_at),
                age(b.created_at, now)
            ),
        ),
        (
            "protected",
            if b.protected { "yes" } else { "no" }.to_string(),
        ),
        (
            "expires",
            match b.expires_at {
                None => "never".to_string(),
                Some(t) => format!("{} (in {})", timestamp_secs(t), expires(b, now)),
            },
        ),
        ("checkpoints", b.checkpoints.to_string()),
    ];
    let mut pairs = pairs;
    if let Some(of) = &b.backup_of {
        pairs.insert(1, ("backup of", of.clone()));
    }
    if let Some(k) = &b.kept_in {
        pairs.push(("backed up", backup_line(k, now)));
    }
    if let Some(f) = &b.following {
        pairs.retain(|(k, _)| *k != "user");
        for (i, p) in follow_details(f, now).into_iter().enumerate() {
            pairs.insert(2 + i, p);
        }
    }
    out.push_str(&fields(&pairs));
    if b.snapshots.is_empty() {
        out.push_str("  snapshots:     none\n");
    } else {
        out.push_str("  snapshots:\n");
        for line in snapshot_list(&b.snapshots, now).lines() {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

fn kind(k: SnapshotKind) -> &'static str {
    match k {
        SnapshotKind::Fork => "fork",
        SnapshotKind::Base => "base",
        SnapshotKind::Periodic => "periodic",
        SnapshotKind::Manual => "manual",
    }
}

/// `ramify snapshot list`: oldest first.
pub fn snapshot_list(snapshots: &[SnapshotInfo], now: DateTime<Utc>) -> String {
    if snapshots.is_empty() {
        return "no snapshots\n".to_string();
    }
    let mut sorted: Vec<&SnapshotInfo> = snapshots.iter().collect();
    sorted.sort_by(|a, b| a.end_lsn.cmp(&b.end_lsn).then(a.name.cmp(&b.name)));
    let rows: Vec<Vec<String>> = sorted
        .into_iter()
        .map(|s| {
            vec![
                s.name.clone(),
                kind(s.kind).to_string(),
                s.end_lsn.to_string(),
                timestamp_secs(s.time),
                age(s.time, now),
            ]
        })
        .collect();
    table(&["NAME", "KIND", "LSN", "TIME", "AGE"], &rows)
}

/// `ramify snapshot create`.
pub fn created_snapshot(branch: &str, s: &SnapshotInfo) -> String {
    format!(
        "snapshot {} of {branch} taken at {} ({}); fork from it with --parent {branch} --at snapshot:{}\n",
        s.name,
        s.end_lsn,
        timestamp(s.time),
        s.name
    )
}

/// `ramify branch reset`.
pub fn reset_done(o: &RestoreOutcome) -> String {
    let b = &o.branch;
    let mut out = format!(
        "reset branch {} to the latest state of {} in {} ms; open sessions were ended\n",
        b.name, o.source, o.elapsed_ms
    );
    out.push_str(&fields(&[
        (
            "fork lsn",
            b.fork_lsn
                .map_or_else(|| "-".to_string(), |l| l.to_string()),
        ),
        (
            "timeline",
            format!("{} (was {}, deleted)", b.timeline_id, o.previous_timeline),
        ),
        ("uri", format!("{} (unchanged)", b.uri)),
    ]));
    out
}

/// `ramify branch restore`.
pub fn restore_done(o: &RestoreOutcome) -> String {
    let b = &o.branch;
    let of = if o.source == b.name {
        String::new()
    } else {
        format!(" of {}", o.source)
    };
    let mut out = format!(
        "restored branch {} to {}{of} in {} ms; open sessions were ended\n",
        b.name, o.point, o.elapsed_ms
    );
    let mut pairs = vec![("fork point", fork_point(b))];
    pairs.push((
        "timeline",
        match &o.backup {
            Some(_) => format!("{} (was {})", b.timeline_id, o.previous_timeline),
            None => format!("{} (was {}, deleted)", b.timeline_id, o.previous_timeline),
        },
    ));
    if let Some(backup) = &o.backup {
        pairs.push((
            "backup",
            format!("{backup} (the state before; suspended, expires after the restore window)"),
        ));
    }
    pairs.push(("uri", format!("{} (unchanged)", b.uri)));
    out.push_str(&fields(&pairs));
    out
}

/// `ramify branch protect|unprotect`.
pub fn protection_changed(b: &BranchView, cleared_expiry: Option<DateTime<Utc>>) -> String {
    match (b.protected, cleared_expiry) {
        (true, Some(t)) => format!(
            "protected branch {}: delete, reset, restore and expiry are refused (its expiry at {} was removed)\n",
            b.name,
            timestamp_secs(t)
        ),
        (true, None) => format!(
            "protected branch {}: delete, reset, restore and expiry are refused\n",
            b.name
        ),
        (false, _) => format!("branch {} is no longer protected\n", b.name),
    }
}

/// `ramify branch expire`.
pub fn expiry_changed(b: &BranchView, now: DateTime<Utc>) -> String {
    match b.expires_at {
        Some(t) => format!(
            "branch {} expires at {} (in {}); it is then deleted with its compute and storage\n",
            b.name,
            timestamp_secs(t),
            expires(b, now)
        ),
        None => format!("branch {} never expires\n", b.name),
    }
}

/// `ramify checkpoint create`.
pub fn created_checkpoint(branch: &str, c: &CheckpointView) -> String {
    let ms = c
        .create_ms
        .map(|ms| format!(" in {ms} ms"))
        .unwrap_or_default();
    format!(
        "checkpoint {} of {branch} at {} ({}){ms}; revert with: ramify branch restore {branch} --at checkpoint:{}\n",
        c.checkpoint.name,
        c.checkpoint.lsn,
        timestamp(c.checkpoint.time),
        c.checkpoint.name
    )
}

/// `ramify checkpoint list`: oldest first, with the branch holding each one's history.
pub fn checkpoint_list(branch: &str, list: &[CheckpointView], now: DateTime<Utc>) -> String {
    if list.is_empty() {
        return format!(
            "no checkpoints: create one with `ramify checkpoint create {branch} NAME`\n"
        );
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.checkpoint.name.clone(),
                c.checkpoint.lsn.to_string(),
                timestamp_secs(c.checkpoint.time),
                age(c.checkpoint.time, now),
                if c.held_by == branch {
                    "this branch".to_string()
                } else {
                    c.held_by.clone()
                },
            ]
        })
        .collect();
    table(&["NAME", "LSN", "TIME", "AGE", "HISTORY ON"], &rows)
}

/// `ramify local status` and the end of `ramify local up`.
pub fn local_status(s: &LocalStatus, log: &Path) -> String {
    let st = &s.storage;
    let mut out = String::from("local mode is running\n");
    out.push_str(&fields(&[
        ("data dir", s.data_dir.clone()),
        ("pid", s.pid.to_string()),
        (
            "postgres",
            format!("{} (as user {})", s.postgres_version, s.pg_user),
        ),
        ("filesystem", st.filesystem.clone()),
        ("clone method", st.clone_method.to_string()),
        (
            "space",
            format!(
                "{} used of {}, {} free",
                human_bytes(st.used_bytes),
                human_bytes(st.capacity_bytes),
                human_bytes(st.available_bytes)
            ),
        ),
        (
            "branches",
            format!("{} ({} running)", s.branches, s.running_computes),
        ),
        ("storage api", s.storage_url.clone()),
        ("log", log.display().to_string()),
    ]));
    for f in &s.following {
        let _ = writeln!(
            out,
            "  following:     {} ← {}: {}",
            f.branch,
            f.follow.conninfo,
            follow_state(&f.follow)
        );
    }
    for c in &s.copies {
        let _ = writeln!(out, "  {}", copy_progress(c, Utc::now()));
    }
    if st.clone_method == CloneMethod::Copy {
        out.push_str(&copy_mode_warning(&st.filesystem));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use ramify_api::{Lsn, NodeStatus};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn branch(name: &str, parent: Option<&str>, minutes_ago: i64) -> BranchView {
        BranchView {
            name: name.into(),
            parent: parent.map(Into::into),
            timeline_id: uuid::Uuid::nil(),
            compute: ComputeStatus::Running,
            host: "127.0.0.1".into(),
            port: 55432,
            database: "app".into(),
            user: "app".into(),
            password: "secret".into(),
            uri: format!("postgresql://app:secret@127.0.0.1:55432/app?b={name}"),
            at: None,
            fork_lsn: None,
            fork_time: None,
            logical_bytes: 0,
            exclusive_bytes: 0,
            history_bytes: 0,
            suspend_after_secs: 300,
            created_at: now() - chrono::Duration::minutes(minutes_ago),
            protected: false,
            expires_at: None,
            backup_of: None,
            checkpoints: 0,
            snapshots: vec![],
            restore_window: None,
            clone_method: CloneMethod::Reflink,
            create_ms: None,
            following: None,
            kept_in: None,
        }
    }

    #[test]
    fn copy_progress_shows_bytes_share_and_rate() {
        let c = ramify_api::CopyProgress {
            timeline: uuid::Uuid::nil(),
            bytes_done: 512 << 20,
            started_at: now() - chrono::Duration::seconds(4),
        };
        assert_eq!(
            copy_progress(&c, now()),
            format!(
                "copying the source: {} in 4s, {}/s",
                human_bytes(512 << 20),
                human_bytes(128 << 20)
            )
        );
    }

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1024), "1.0 KiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(25_270_000), "24.1 MiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ages_use_two_units() {
        assert_eq!(human_age(-5), "0s");
        assert_eq!(human_age(42), "42s");
        assert_eq!(human_age(90), "1m30s");
        assert_eq!(human_age(300), "5m");
        assert_eq!(human_age(45 * 60 + 10), "45m");
        assert_eq!(human_age(3600), "1h");
        assert_eq!(human_age(3 * 3600 + 12 * 60), "3h12m");
        assert_eq!(human_age(2 * 86_400 + 4 * 3600 + 5), "2d4h");
        assert_eq!(human_age(30 * 86_400), "30d");
    }

    #[test]
    fn table_aligns_by_characters() {
        let rows = vec![
            vec!["└─ ab".to_string(), "x".to_string()],
            vec!["abcdefgh".to_string(), "".to_string()],
        ];
        assert_eq!(
            table(&["NAME", "V"], &rows),
            "NAME      V\n└─ ab     x\nabcdefgh\n"
        );
    }

    #[test]
    fn branch_tree_golden() {
        let mut main = branch("main", None, 3 * 60);
        main.exclusive_bytes = 25_270_000;
        let mut dev = branch("dev", Some("main"), 120);
        dev.compute = ComputeStatus::Suspended;
        dev.fork_lsn = Some(Lsn(0x16B3748));
        dev.exclusive_bytes = 1_258_291;
        dev.port = 55433;
        let mut fix = branch("dev-fix", Some("dev"), 5);
        fix.fork_lsn = Some(Lsn(0x1700000));
        fix.exclusive_bytes = 16384;
        fix.port = 55435;
        let mut pr = branch("pr-12", Some("main"), 10);
        pr.fork_lsn = Some(Lsn(0x1_018A_0000));
        pr.port = 55434;
        pr.expires_at =
            Some(now() + chrono::Duration::minutes(119) + chrono::Duration::seconds(30));
        main.protected = true;
        let mut other = branch("scratch", None, 1);
        other.port = 55436;
        other.expires_at = Some(now() - chrono::Duration::seconds(1));
        let mut orphan = branch("orphan", Some("deleted-parent"), 2);
        orphan.fork_lsn = Some(Lsn(0x1000));
        orphan.port = 55437;
        let all: Vec<BranchRow> = [pr, other, fix, main, orphan, dev]
            .iter()
            .map(crate::backend::local::row)
            .collect();
        assert_eq!(
            branch_list(&all, now(), LOCAL_EMPTY),
            "\
NAME           STATE      FORK LSN   EXCLUSIVE  PORT   AGE  EXPIRES
main           running    -          24.1 MiB   55432  3h   protected
├─ dev         suspended  0/16B3748  1.2 MiB    55433  2h   -
│  └─ dev-fix  running    0/1700000  16.0 KiB   55435  5m   -
└─ pr-12       running    1/18A0000  0 B        55434  10m  1h59m
orphan         running    0/1000     0 B        55437  2m   -
scratch        running    -          0 B        55436  1m   now
"
        );
    }

    #[test]
    fn deep_tree_keeps_ancestor_rails() {
        let all = rows(vec![
            branch("a", None, 10),
            branch("b", Some("a"), 9),
            branch("c", Some("b"), 8),
            branch("d", Some("a"), 7),
            branch("e", Some("c"), 6),
            branch("f", Some("c"), 5),
        ]);
        let lines: Vec<String> = tree_order(&all)
            .into_iter()
            .map(|(p, b)| format!("{p}{}", b.name))
            .collect();
        assert_eq!(
            lines,
            ["a", "├─ b", "│  └─ c", "│     ├─ e", "│     └─ f", "└─ d"]
        );
    }

    #[test]
    fn parent_cycles_do_not_lose_branches() {
        let all = rows(vec![branch("x", Some("y"), 2), branch("y", Some("x"), 1)]);
        let names: Vec<&str> = tree_order(&all)
            .iter()
            .map(|(_, b)| b.name.as_str())
            .collect();
        assert_eq!(names.len(), 2);
    }

    #[test]
    fn empty_list_says_how_to_start() {
        assert_eq!(branch_list(&[], now(), "nothing here"), "nothing here\n");
    }

    const LOCAL_EMPTY: &str = "no branches yet";

    fn rows(bs: Vec<BranchView>) -> Vec<BranchRow> {
        bs.iter().map(crate::backend::local::row).collect()
    }

    /// A cluster's branches with -A: one tree across namespaces, NAMESPACE first, and
    /// branches not Ready yet showing their phase.
    #[test]
    fn tree_across_namespaces_golden() {
        let k = |ns: &str, name: &str, parent: Option<(&str, &str)>, state: &str, mins: i64| {
            BranchRow {
                namespace: Some(ns.into()),
                name: name.into(),
                parent: parent.map(|(pns, p)| (Some(pns.into()), p.into())),
                state: state.into(),
                fork_lsn: parent.map(|_| "0/16B3748".into()),
                exclusive_bytes: (state != "pending").then_some(4096),
                port: (state != "pending").then_some(20001 + mins as u16),
                created_at: now() - chrono::Duration::minutes(mins),
                protected: name == "main",
                expires_at: None,
                restorable_from: None,
                restorable_from_lsn: None,
            }
        };
        let all = vec![
            k("team-a", "dev", Some(("prod", "main")), "running", 30),
            k("prod", "main", None, "suspended", 300),
            k("team-b", "pr-7", Some(("prod", "main")), "pending", 1),
            k("team-a", "dev-fix", Some(("team-a", "dev")), "creating", 2),
            k("team-a", "main", None, "running", 100),
        ];
        assert_eq!(
            branch_list(&all, now(), LOCAL_EMPTY),
            "\
NAMESPACE  NAME           STATE      FORK LSN   EXCLUSIVE  PORT   AGE    EXPIRES
prod       main           suspended  -          4.0 KiB    20301  5h     protected
team-a     ├─ dev         running    0/16B3748  4.0 KiB    20031  30m    -
team-a     │  └─ dev-fix  creating   0/16B3748  4.0 KiB    20003  2m     -
team-b     └─ pr-7        pending    0/16B3748  -          -      1m     -
team-a     main           running    -          4.0 KiB    20101  1h40m  protected
"
        );
    }

    fn window(b: &mut BranchView, to: Option<u64>) {
        b.restore_window = Some(ramify_api::RestoreWindow {
            from_lsn: Some(Lsn(0x17414F8)),
            from_time: Some(b.created_at),
            to_lsn: to.map(Lsn),
            to_time: to.map(|_| now()),
        });
    }

    /// `-o wide` adds where each branch's restorable history starts; a root an older
    /// release made empty has none yet.
    #[test]
    fn wide_list_shows_where_history_starts_golden() {
        let mut main = branch("main", None, 90);
        window(&mut main, None);
        let mut dev = branch("dev", Some("main"), 30);
        window(&mut dev, None);
        let old = branch("old", None, 120);
        let all = rows(vec![main, dev, old]);
        assert_eq!(
            branch_list_wide(&all, now(), LOCAL_EMPTY),
            "\
NAME    STATE    FORK LSN  EXCLUSIVE  PORT   AGE    EXPIRES  RESTORABLE FROM       FROM LSN
old     running  -         0 B        55432  2h     -        -                     -
main    running  -         0 B        55432  1h30m  -        2026-03-01T10:30:00Z  0/17414F8
└─ dev  running  -         0 B        55432  30m    -        2026-03-01T11:30:00Z  0/17414F8
"
        );
        assert!(!branch_list(&all, now(), LOCAL_EMPTY).contains("RESTORABLE"));
    }

    /// `branch get` states the range: to now while the compute runs, to its last
    /// checkpoint while it is suspended.
    #[test]
    fn details_show_the_restorable_range() {
        let mut b = branch("main", None, 90);
        window(&mut b, Some(0x3000000));
        let line = |b: &BranchView| {
            branch_details(b, now())
                .lines()
                .find(|l| l.contains("restorable:"))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(
            line(&b),
            "restorable:    2026-03-01T10:30:00.000Z (lsn 0/17414F8) to now"
        );
        b.compute = ComputeStatus::Suspended;
        assert_eq!(
            line(&b),
            "restorable:    2026-03-01T10:30:00.000Z (lsn 0/17414F8) to 2026-03-01T12:00:00.000Z (lsn 0/3000000)"
        );
        b.restore_window = Some(ramify_api::RestoreWindow {
            from_lsn: None,
            from_time: None,
            to_lsn: None,
            to_time: None,
        });
        assert!(line(&b).contains("nothing yet"), "{}", line(&b));
    }

    #[test]
    fn created_fork_golden() {
        let mut b = branch("dev", Some("main"), 0);
        b.fork_lsn = Some(Lsn(0x16B3748));
        b.fork_time = Some(Utc.with_ymd_and_hms(2026, 3, 1, 11, 59, 58).unwrap());
        b.create_ms = Some(142);
        b.exclusive_bytes = 4096;
        assert_eq!(
            created_branch(&b),
            "\
created branch dev from main in 142 ms
  fork lsn:   0/16B3748
  fork time:  2026-03-01T11:59:58.000Z
  exclusive:  4.0 KiB
  suspends:   5m idle
  uri:        postgresql://app:secret@127.0.0.1:55432/app?b=dev
"
        );
        b.clone_method = CloneMethod::Copy;
        assert!(created_branch(&b).contains("WARNING: copy mode"));
    }

    #[test]
    fn created_root_has_no_fork_point() {
        let mut b = branch("main", None, 0);
        b.suspend_after_secs = 0;
        let out = created_branch(&b);
        assert!(out.starts_with("created empty root branch main\n"), "{out}");
        assert!(!out.contains("fork lsn"), "{out}");
        assert!(out.contains("suspends:   never"), "{out}");
        b.clone_method = CloneMethod::Copy;
        // Nothing was cloned for a new root.
        assert!(!created_branch(&b).contains("WARNING"));
    }

    #[test]
    fn snapshot_table_golden() {
        let snap = |name: &str, kind, lsn, mins| SnapshotInfo {
            name: name.into(),
            kind,
            start_lsn: Lsn(lsn - 0x100),
            end_lsn: Lsn(lsn),
            time: now() - chrono::Duration::minutes(mins),
            pg_timeline: 2,
        };
        let list = vec![
            snap("before-migration", SnapshotKind::Manual, 0x3000000, 5),
            snap("fork", SnapshotKind::Fork, 0x1000000, 60),
        ];
        assert_eq!(
            snapshot_list(&list, now()),
            "\
NAME              KIND    LSN        TIME                  AGE
fork              fork    0/1000000  2026-03-01T11:00:00Z  1h
before-migration  manual  0/3000000  2026-03-01T11:55:00Z  5m
"
        );
    }

    fn status(clone_method: CloneMethod, filesystem: &str) -> LocalStatus {
        LocalStatus {
            data_dir: "/var/lib/ramify".into(),
            pid: 4242,
            storage_url: "http://127.0.0.1:41234".into(),
            storage: NodeStatus {
                version: "0.1.0".into(),
                data_dir: "/var/lib/ramify/storage".into(),
                clone_method,
                filesystem: filesystem.into(),
                capacity_bytes: 8 << 30,
                used_bytes: 1 << 30,
                available_bytes: 7 << 30,
                timelines: 3,
                restore_window_seconds: 86_400,
                snapshot_interval_seconds: 3600,
                snapshot_wal_bytes: 256 << 20,
                reserve: None,
                backup: None,
            },
            branches: 3,
            running_computes: 1,
            postgres_version: "15.8".into(),
            pg_user: "postgres".into(),
            copies: vec![],
            following: vec![],
        }
    }

    #[test]
    fn local_status_golden() {
        let out = local_status(
            &status(CloneMethod::Reflink, "xfs"),
            Path::new("/var/lib/ramify/local/daemon.log"),
        );
        assert_eq!(
            out,
            "\
local mode is running
  data dir:      /var/lib/ramify
  pid:           4242
  postgres:      15.8 (as user postgres)
  filesystem:    xfs
  clone method:  reflink
  space:         1.0 GiB used of 8.0 GiB, 7.0 GiB free
  branches:      3 (1 running)
  storage api:   http://127.0.0.1:41234
  log:           /var/lib/ramify/local/daemon.log
"
        );
    }

    #[test]
    fn copy_mode_is_loud() {
        let out = local_status(&status(CloneMethod::Copy, "ext4"), Path::new("/l"));
        assert!(
            out.contains(
                "WARNING: copy mode: forks are full copies. The data directory is on ext4"
            ),
            "{out}"
        );
    }

    #[test]
    fn structured_output_keeps_every_field() {
        let mut b = branch("dev", Some("main"), 0);
        b.fork_lsn = Some(Lsn(0x16B3748));
        let json = structured(OutputFormat::Json, &vec![b.clone()])
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v[0]["fork_lsn"], "0/16B3748");
        assert_eq!(v[0]["exclusive_bytes"], 0);
        assert!(v[0].get("logical_bytes").is_some());
        let yaml = structured(OutputFormat::Yaml, &b).unwrap().unwrap();
        assert!(yaml.contains("fork_lsn: 0/16B3748"), "{yaml}");
        assert!(structured(OutputFormat::Table, &b).unwrap().is_none());
    }
}
