//! WAL files: segment names, the archive command computes use, gathering the WAL a fork
//! replays, and reading commit times with `pg_waldump`.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, NaiveDateTime, Utc};
use ramify_api::{CloneMethod, Lsn};

use crate::beneath::Dir;
use crate::clone::{self, CloneError};

/// Postgres's default (and Ramify's only supported) WAL segment size.
pub const SEGMENT_SIZE: u64 = 16 * 1024 * 1024;
const SEGMENTS_PER_XLOGID: u64 = 0x1_0000_0000 / SEGMENT_SIZE;

/// Errors handling WAL files.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    Fs(#[from] CloneError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("WAL segment {name} (needed to reach {target}) is in neither the archive nor pg_wal")]
    Missing { name: String, target: String },
    #[error("pg_waldump failed: {0}")]
    Waldump(String),
}

/// The `archive_command` every compute uses. It runs with PGDATA as working directory, so
/// `../archive-inbox` is the timeline's archive inbox wherever the timeline directory is
/// mounted, and it only needs a POSIX shell and coreutils (present in the official
/// `postgres` image). The compute only ever writes the inbox; the node moves each arrival
/// into the archive `wal/`, which no compute reaches (see [`crate::inbox`]).
/// It copies to a temporary name, fsyncs the file, renames it into place and fsyncs the
/// directory, so an acknowledged segment survives a crash; an existing file is never
/// overwritten, and succeeds only if its content is identical (a retry after a crash).
pub fn archive_command() -> String {
    let d = format!("../{}", crate::inbox::INBOX);
    format!(
        "test ! -f {d}/%f && cp %p {d}/%f.tmp && sync {d}/%f.tmp && mv {d}/%f.tmp {d}/%f && sync {d} || cmp -s %p {d}/%f"
    )
}

/// A parsed WAL file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalFile {
    /// A full segment `TTTTTTTTXXXXXXXXYYYYYYYY`.
    Segment { tli: u32, segno: u64 },
    /// A timeline history file `TTTTTTTT.history`.
    History { tli: u32 },
}

/// Parses a file name of `pg_wal` or an archive; other files (`.partial`, `.tmp`,
/// `.backup`, status files) are `None`.
pub fn parse_name(name: &str) -> Option<WalFile> {
    let hex = |s: &str| u64::from_str_radix(s, 16).ok();
    if name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        let tli = hex(&name[0..8])? as u32;
        let log = hex(&name[8..16])?;
        let seg = hex(&name[16..24])?;
        return Some(WalFile::Segment {
            tli,
            segno: log * SEGMENTS_PER_XLOGID + seg,
        });
    }
    let tli = name.strip_suffix(".history")?;
    if tli.len() == 8 && tli.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(WalFile::History {
            tli: hex(tli)? as u32,
        });
    }
    None
}

/// The file name of segment `segno` on Postgres timeline `tli`.
pub fn segment_name(tli: u32, segno: u64) -> String {
    format!(
        "{:08X}{:08X}{:08X}",
        tli,
        segno / SEGMENTS_PER_XLOGID,
        segno % SEGMENTS_PER_XLOGID
    )
}

/// The newest Postgres timeline id with a history file in `dir` (1 when there is none).
pub fn newest_timeline(dir: &Dir) -> u32 {
    list(dir)
        .unwrap_or_default()
        .into_values()
        .filter_map(|f| match f {
            WalFile::History { tli } => Some(tli),
            _ => None,
        })
        .max()
        .unwrap_or(1)
}

/// WAL files in `dir` by name, read from its descriptor. Only names are looked at here;
/// whatever is cloned from the list is checked when it is opened.
pub fn list(dir: &Dir) -> Result<BTreeMap<String, WalFile>, WalError> {
    let mut out = BTreeMap::new();
    for e in dir.entries().map_err(CloneError::from)? {
        if let Some(name) = e.name.to_str() {
            if let Some(f) = parse_name(name) {
                out.insert(name.to_string(), f);
            }
        }
    }
    Ok(out)
}

/// Puts into `pg_wal` every segment with number in `segs` and every history file found in
/// `sources` (earlier sources win), cloned, each marked `.done` so the new timeline does
/// not archive its parent's WAL again. Returns how many files were added.
///
/// A file `pg_wal` already holds (cloned with a snapshot) is replaced by a source's copy:
/// the snapshot of a stopped compute holds its last segment as it was then, and the
/// compute may have written on into that segment after a restart; the source's copy holds
/// all of it.
///
/// Sources are a compute's own directories: a WAL-named symlink, special file or hard
/// link there is refused (see [`crate::beneath`]), never cloned.
pub fn gather(
    pg_wal: &Dir,
    sources: &[&Dir],
    segs: std::ops::RangeInclusive<u64>,
    method: CloneMethod,
) -> Result<usize, WalError> {
    gather_as(pg_wal, sources, segs, method, Existing::Replace)
}

/// What [`gather_as`] does with a file `pg_wal` already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Unlinked, and the source's copy cloned as a new file.
    Replace,
    /// Rewritten in place ([`clone::rewrite_file`]), for a `pg_wal` a running standby
    /// reads: the segment it has open must show what was fed, not end where its old copy
    /// ended (promoted then, it would stop there).
    Rewrite,
}

/// [`gather`], choosing what happens to a file `pg_wal` already holds.
pub fn gather_as(
    pg_wal: &Dir,
    sources: &[&Dir],
    segs: std::ops::RangeInclusive<u64>,
    method: CloneMethod,
    existing: Existing,
) -> Result<usize, WalError> {
    let status = pg_wal
        .ensure_dir("archive_status", 0o700)
        .map_err(CloneError::from)?;
    let mut added = 0;
    let mut placed = std::collections::HashSet::new();
    for src in sources {
        for (name, f) in list(src)? {
            let wanted = match f {
                WalFile::Segment { segno, .. } => segs.contains(&segno),
                WalFile::History { .. } => true,
            };
            if !wanted || placed.contains(&name) {
                continue;
            }
            let n = std::ffi::OsStr::new(&name);
            let cloned = match existing {
                Existing::Replace => pg_wal
                    .remove_file_if_exists(&name)
                    .map_err(CloneError::from)
                    .and_then(|()| clone::clone_file(src, n, pg_wal, n, method)),
                Existing::Rewrite => clone::rewrite_file(src, n, pg_wal, n, method),
            };
            match cloned {
                Ok(_) => {}
                // Recycled by a running parent between listing and cloning: an older
                // source, or a later check, decides whether it mattered.
                Err(CloneError::Beneath(e)) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
            status
                .write(format!("{name}.done"), b"", false)
                .map_err(CloneError::from)?;
            status
                .remove_file_if_exists(format!("{name}.ready"))
                .map_err(CloneError::from)?;
            placed.insert(name);
            added += 1;
        }
    }
    Ok(added)
}

/// Checks that `pg_wal` holds every segment from `from` to `to` on some timeline.
pub fn check_complete(pg_wal: &Dir, from: Lsn, to: Lsn, tli: u32) -> Result<(), WalError> {
    let have: Vec<u64> = list(pg_wal)?
        .into_values()
        .filter_map(|f| match f {
            WalFile::Segment { segno, .. } => Some(segno),
            _ => None,
        })
        .collect();
    for segno in from.segment(SEGMENT_SIZE)..=to.segment(SEGMENT_SIZE) {
        if !have.contains(&segno) {
            return Err(WalError::Missing {
                name: segment_name(tli, segno),
                target: to.to_string(),
            });
        }
    }
    Ok(())
}

/// A commit record found in WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    /// Start of the commit record.
    pub lsn: Lsn,
    /// The transaction's commit timestamp.
    pub time: DateTime<Utc>,
}

/// Parses `pg_waldump --rmgr=Transaction` output (run with `TZ=UTC`) into commits.
pub fn parse_waldump(out: &str) -> Vec<Commit> {
    let mut commits = Vec::new();
    for line in out.lines() {
        let Some(desc_at) = line.find("desc: COMMIT") else {
            continue;
        };
        let rest = &line[desc_at..];
        // "desc: COMMIT 2026-11-28 14:10:11.123456 UTC" or "desc: COMMIT_PREPARED 7: 2026-…"
        let Some(ts_start) = rest.find(|c: char| c.is_ascii_digit() && rest.contains(" UTC"))
        else {
            continue;
        };
        let mut ts = &rest[ts_start..];
        if let Some(colon) = ts.find(": ") {
            if colon < 12 {
                ts = &ts[colon + 2..];
            }
        }
        let Some(end) = ts.find(" UTC") else { continue };
        let (Some(lsn), Ok(naive)) = (
            record_lsn(line),
            NaiveDateTime::parse_from_str(&ts[..end], "%Y-%m-%d %H:%M:%S%.f"),
        ) else {
            continue;
        };
        commits.push(Commit {
            lsn,
            time: naive.and_utc(),
        });
    }
    commits
}

/// Lists commit records in `pg_wal` on timeline `tli` from `start` up to `end` (or to the
/// end of the WAL present), using the installation's `pg_waldump`.
pub fn commits(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
    end: Option<Lsn>,
) -> Result<Vec<Commit>, WalError> {
    let mut cmd = waldump_from(waldump, pg_wal, tli, start);
    cmd.env("TZ", "UTC").arg("--rmgr=Transaction");
    if let Some(e) = end {
        cmd.arg("--end").arg(e.to_string());
    }
    let out = cmd
        .output()
        .map_err(|e| WalError::Waldump(format!("cannot run {}: {e}", waldump.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Reaching the end of the WAL present is how pg_waldump stops without --end, and a
    // start at the very end finds no record at all; anything else is a real error.
    if !out.status.success() && stdout.is_empty() && !end_of_wal(&stderr) {
        return Err(WalError::Waldump(stderr.trim().to_string()));
    }
    Ok(parse_waldump(&stdout))
}

/// `pg_waldump` over the segments in `pg_wal` on timeline `tli`, from `start`.
fn waldump_from(waldump: &Path, pg_wal: &Path, tli: u32, start: Lsn) -> Command {
    let mut cmd = Command::new(waldump);
    cmd.arg("--path")
        .arg(pg_wal)
        .arg("--timeline")
        .arg(tli.to_string())
        .arg("--start")
        .arg(start.to_string());
    cmd
}

/// Whether `pg_waldump` stopped where the WAL present ends (how it stops without
/// `--end`) rather than on a real error: an invalid record, no record at all from the
/// start, or after a segment switch a next segment that is not there.
fn end_of_wal(stderr: &str) -> bool {
    stderr.contains("error in WAL record")
        || stderr.contains("could not find a valid record")
        || stderr.contains("could not find file")
}

/// Whether `pg_wal` holds a WAL record that starts at or after `lsn` on timeline `tli`
/// (recovery to a target stops only at such a record).
pub fn record_at_or_after(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    lsn: Lsn,
) -> Result<bool, WalError> {
    let out = waldump_from(waldump, pg_wal, tli, lsn)
        .args(["--limit", "1"])
        .output()
        .map_err(|e| WalError::Waldump(format!("cannot run {}: {e}", waldump.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !out.stdout.is_empty() {
        return Ok(true);
    }
    if end_of_wal(&stderr) {
        return Ok(false);
    }
    Err(WalError::Waldump(stderr.trim().to_string()))
}

/// The start of the last complete WAL record in `pg_wal` on timeline `tli`, reading from
/// `start` (a segment's first byte will do: `pg_waldump` finds the first record after
/// it) to the end of the WAL present, as recovery does. `None` when no record starts
/// there.
pub fn last_record(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
) -> Result<Option<Lsn>, WalError> {
    last_record_until(waldump, pg_wal, tli, start, None)
}

/// [`last_record`] reading no further than `end` (the end of the last segment present):
/// `pg_waldump` stops there instead of waiting seconds for a next segment that will
/// never come.
pub fn last_record_before(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
    end: Lsn,
) -> Result<Option<Lsn>, WalError> {
    last_record_until(waldump, pg_wal, tli, start, Some(end))
}

/// The start and the end of the last complete WAL record in `pg_wal` on timeline `tli`,
/// reading from `start` to `end` as [`last_record_before`] does: where a copy that
/// replays this WAL stops, and the byte its last segment must hold.
pub fn last_record_span(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
    end: Lsn,
) -> Result<Option<(Lsn, Lsn)>, WalError> {
    let stdout = waldump_output(waldump, pg_wal, tli, start, Some(end))?;
    Ok(stdout
        .lines()
        .rev()
        .find_map(|l| Some((record_lsn(l)?, record_total_len(l)?)))
        .map(|(at, len)| (at, record_end(at, len))))
}

/// WAL page size (Postgres's default, and Ramify's only supported one).
const WAL_PAGE: u64 = 8192;

/// Where a record of `len` bytes starting at `at` ends: its bytes, and the page header of
/// every page it continues on (a long one at a segment's start).
fn record_end(at: Lsn, len: u64) -> Lsn {
    let (mut pos, mut left) = (at.0, len);
    while left > 0 {
        if pos % WAL_PAGE == 0 {
            pos += if pos % SEGMENT_SIZE == 0 { 40 } else { 24 };
        }
        let take = (WAL_PAGE - pos % WAL_PAGE).min(left);
        pos += take;
        left -= take;
    }
    Lsn(pos)
}

/// The total length of one `pg_waldump` record line (`len (rec/tot):    114/   114,`).
fn record_total_len(line: &str) -> Option<u64> {
    let at = line.find("len (rec/tot):")?;
    let rest = &line[at + "len (rec/tot):".len()..];
    rest.split(',')
        .next()?
        .split('/')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// What `pg_waldump` prints of the records from `start` (to `end`), a stop at the end of
/// the WAL present not being an error.
fn waldump_output(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
    end: Option<Lsn>,
) -> Result<String, WalError> {
    let mut cmd = waldump_from(waldump, pg_wal, tli, start);
    if let Some(end) = end {
        cmd.arg("--end").arg(end.to_string());
    }
    let out = cmd
        .output()
        .map_err(|e| WalError::Waldump(format!("cannot run {}: {e}", waldump.display())))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !end_of_wal(&stderr) {
        return Err(WalError::Waldump(stderr.trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn last_record_until(
    waldump: &Path,
    pg_wal: &Path,
    tli: u32,
    start: Lsn,
    end: Option<Lsn>,
) -> Result<Option<Lsn>, WalError> {
    let stdout = waldump_output(waldump, pg_wal, tli, start, end)?;
    Ok(stdout.lines().rev().find_map(record_lsn))
}

/// The LSN of one `pg_waldump` record line (`rmgr: … lsn: 0/01000028, prev …`).
fn record_lsn(line: &str) -> Option<Lsn> {
    let at = line.find(" lsn: ")?;
    line[at + 6..].split(',').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_record_ends_after_its_bytes_and_the_page_headers_it_crosses() {
        let line = "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/03000028, prev 0/030000D8, desc: CHECKPOINT_SHUTDOWN";
        assert_eq!(record_lsn(line), Some(Lsn(0x0300_0028)));
        assert_eq!(record_total_len(line), Some(114));
        assert_eq!(record_end(Lsn(0x0300_0028), 114), Lsn(0x0300_0028 + 114));
        // 100 bytes before a page's end: the rest after the next page's short header.
        assert_eq!(record_end(Lsn(8192 - 100), 114), Lsn(8192 + 24 + 14));
        // Across a segment boundary: the long header.
        let seg_end = SEGMENT_SIZE * 4;
        assert_eq!(record_end(Lsn(seg_end - 10), 20), Lsn(seg_end + 40 + 10));
    }

    fn dir(p: &Path) -> Dir {
        Dir::open_root(p).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(1, 0), "000000010000000000000000");
        assert_eq!(segment_name(2, 257), "000000020000000100000001");
        assert_eq!(
            parse_name("000000020000000100000001"),
            Some(WalFile::Segment { tli: 2, segno: 257 })
        );
        assert_eq!(
            parse_name("0000000A.history"),
            Some(WalFile::History { tli: 10 })
        );
        for other in [
            "000000010000000000000001.partial",
            "000000010000000000000001.tmp",
            "000000010000000000000002.00000028.backup",
            "archive_status",
            "x.history",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    /// Runs the archive command the way Postgres does: via `sh -c`, in PGDATA, with `%p`
    /// and `%f` substituted.
    fn archive(pgdata: &Path, name: &str) -> bool {
        let cmd = archive_command()
            .replace("%p", &format!("pg_wal/{name}"))
            .replace("%f", name);
        std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(pgdata)
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn archive_command_is_durable_and_never_overwrites() {
        let t = tempfile::tempdir().unwrap();
        let pgdata = t.path().join("pgdata");
        fs::create_dir_all(pgdata.join("pg_wal")).unwrap();
        let inbox = t.path().join(crate::inbox::INBOX);
        fs::create_dir_all(&inbox).unwrap();
        let seg = "000000010000000000000001";
        fs::write(pgdata.join("pg_wal").join(seg), b"first").unwrap();
        assert!(archive(&pgdata, seg), "a new segment is archived");
        assert_eq!(fs::read(inbox.join(seg)).unwrap(), b"first");
        assert!(!inbox.join(format!("{seg}.tmp")).exists());
        assert!(
            archive(&pgdata, seg),
            "a retry with identical content succeeds"
        );
        fs::write(pgdata.join("pg_wal").join(seg), b"other").unwrap();
        assert!(!archive(&pgdata, seg), "different content is refused");
        assert_eq!(fs::read(inbox.join(seg)).unwrap(), b"first");
        assert!(
            !t.path().join("wal").exists(),
            "the compute's command never touches the archive itself"
        );
        assert!(
            !archive(&pgdata, "000000010000000000000009"),
            "a missing source fails"
        );
    }

    #[test]
    fn waldump_lines() {
        let out = "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/0154A3A8, prev 0/0154A370, desc: COMMIT 2026-11-28 14:10:11.123456 UTC\n\
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/0154A400, prev 0/0154A3A8, desc: ABORT 2026-11-28 14:10:12.000001 UTC\n\
rmgr: Transaction len (rec/tot):     82/    82, tx:        737, lsn: 0/0154A500, prev 0/0154A400, desc: COMMIT 2026-11-28 14:10:13.5 UTC; subxacts: 738\n";
        let c = parse_waldump(out);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].lsn.to_string(), "0/154A3A8");
        assert_eq!(c[0].time.to_rfc3339(), "2026-11-28T14:10:11.123456+00:00");
        assert_eq!(c[1].lsn.to_string(), "0/154A500");
    }

    #[test]
    fn gather_clones_range_and_marks_done() {
        let t = tempfile::tempdir().unwrap();
        let arch = t.path().join("arch");
        let wal = t.path().join("pg_wal");
        fs::create_dir_all(&arch).unwrap();
        fs::create_dir_all(&wal).unwrap();
        for s in 0..5 {
            fs::write(arch.join(segment_name(1, s)), [s as u8; 8]).unwrap();
        }
        fs::write(arch.join("00000002.history"), b"1\t0/3000000\tx\n").unwrap();
        fs::write(arch.join("000000010000000000000004.partial"), b"p").unwrap();
        let n = gather(&dir(&wal), &[&dir(&arch)], 1..=3, CloneMethod::Copy).unwrap();
        assert_eq!(n, 4);
        assert!(wal.join(segment_name(1, 3)).exists());
        assert!(!wal.join(segment_name(1, 4)).exists());
        assert!(wal
            .join("archive_status/000000010000000000000002.done")
            .exists());
        assert_eq!(newest_timeline(&dir(&wal)), 2);
        check_complete(&dir(&wal), Lsn(SEGMENT_SIZE), Lsn(3 * SEGMENT_SIZE + 5), 1).unwrap();
        assert!(check_complete(&dir(&wal), Lsn(0), Lsn(SEGMENT_SIZE), 1).is_err());
    }

    #[test]
    fn gathered_segments_replace_what_a_snapshot_held() {
        let t = tempfile::tempdir().unwrap();
        let (archive, live, wal) = (t.path().join("a"), t.path().join("l"), t.path().join("w"));
        for d in [&archive, &live, &wal] {
            fs::create_dir_all(d).unwrap();
        }
        // The snapshot of a stopped compute holds segment 2 as it was at its shutdown;
        // the compute wrote on into it after a restart (live), and finished segment 1
        // (archive, which wins over live).
        fs::write(wal.join(segment_name(1, 1)), b"old1").unwrap();
        fs::write(wal.join(segment_name(1, 2)), b"shutdown").unwrap();
        fs::write(wal.join(segment_name(1, 5)), b"outside").unwrap();
        fs::write(archive.join(segment_name(1, 1)), b"archived1").unwrap();
        fs::write(live.join(segment_name(1, 1)), b"live1").unwrap();
        fs::write(live.join(segment_name(1, 2)), b"shutdown+more").unwrap();
        let n = gather(
            &dir(&wal),
            &[&dir(&archive), &dir(&live)],
            1..=3,
            CloneMethod::Copy,
        )
        .unwrap();
        assert_eq!(n, 2);
        let read = |s| fs::read(wal.join(segment_name(1, s))).unwrap();
        assert_eq!(read(1), b"archived1");
        assert_eq!(read(2), b"shutdown+more");
        assert_eq!(read(5), b"outside", "segments outside the range stay");
    }

    /// A warm standby replaying a partial segment holds it open: fed again, the segment
    /// is rewritten in place so that descriptor reads on past the old end (a replaced
    /// file would end there, and a standby promoted meanwhile would stop short). A link
    /// at the name is replaced, never written through.
    #[test]
    fn a_rewritten_segment_is_read_on_through_a_descriptor_opened_before() {
        use std::io::{Read, Seek};
        let t = tempfile::tempdir().unwrap();
        let (live, wal) = (t.path().join("live"), t.path().join("pg_wal"));
        fs::create_dir_all(&live).unwrap();
        fs::create_dir_all(&wal).unwrap();
        let (seg, next) = (segment_name(1, 3), segment_name(1, 4));
        fs::write(live.join(&seg), b"records\0\0\0\0\0\0\0\0").unwrap();
        let feed = |existing| {
            gather_as(
                &dir(&wal),
                &[&dir(&live)],
                3..=4,
                CloneMethod::Copy,
                existing,
            )
            .unwrap()
        };
        feed(Existing::Rewrite);
        let mut reader = fs::File::open(wal.join(&seg)).unwrap();
        fs::write(live.join(&seg), b"records+more\0\0\0\0").unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, b"another file").unwrap();
        std::os::unix::fs::symlink(&victim, wal.join(&next)).unwrap();
        fs::write(live.join(&next), b"next").unwrap();
        feed(Existing::Rewrite);
        let mut seen = Vec::new();
        reader.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"records+more\0\0\0\0");
        assert_eq!(fs::read(&victim).unwrap(), b"another file");
        assert_eq!(fs::read(wal.join(&next)).unwrap(), b"next");
        assert!(!wal.join(&next).is_symlink());

        // Replaced, as every other gather does, the open descriptor keeps the old copy.
        fs::write(live.join(&seg), b"records+more+end").unwrap();
        feed(Existing::Replace);
        reader.rewind().unwrap();
        seen.clear();
        reader.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"records+more\0\0\0\0");
    }

    /// A WAL-named symlink or hard link in an archive, pointing at another timeline's
    /// file, is refused by name; the other file is untouched and nothing is placed.
    #[test]
    fn gather_refuses_links_in_a_source() {
        let t = tempfile::tempdir().unwrap();
        let (arch, wal) = (t.path().join("arch"), t.path().join("pg_wal"));
        fs::create_dir_all(&arch).unwrap();
        fs::create_dir_all(&wal).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, b"another timeline's relation").unwrap();
        let seg = segment_name(1, 2);
        std::os::unix::fs::symlink(&victim, arch.join(&seg)).unwrap();
        let e = gather(
            &dir(&wal),
            &[&dir(t.path()).open_dir("arch").unwrap()],
            1..=3,
            CloneMethod::Copy,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("arch/{seg} is a symbolic link")),
            "{e}"
        );
        assert!(!wal.join(&seg).exists());
        fs::remove_file(arch.join(&seg)).unwrap();
        fs::hard_link(&victim, arch.join(&seg)).unwrap();
        let e = gather(
            &dir(&wal),
            &[&dir(t.path()).open_dir("arch").unwrap()],
            1..=3,
            CloneMethod::Copy,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("arch/{seg} has 2 hard links")),
            "{e}"
        );
        assert_eq!(fs::read(&victim).unwrap(), b"another timeline's relation");
    }
}
