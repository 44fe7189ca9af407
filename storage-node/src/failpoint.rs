//! Failpoints: named steps of the node's multi-step operations where a test can make the
//! process die for real (SIGKILL, no unwinding, no destructors, no flush) or stall.
//!
//! They are inert unless the environment variable `RAMIFY_FAILPOINTS` is set when the
//! process starts, to a comma-separated list of `name=action`:
//!
//! * `kill` — the process sends itself SIGKILL at that step (what a crash, an OOM kill or
//!   a node losing power does to the files and records it was writing);
//! * `sleep(MS)` — the step waits MS milliseconds (to widen a race window in a test);
//! * `N*ACTION` — the action fires on the N-th time the step is reached (1-based), the
//!   other times it does nothing.
//!
//! Example: `RAMIFY_FAILPOINTS='fork.after_build=kill,snapshot.before_publish=2*kill'`.
//! The steps are the names passed to [`hit`] and [`hit_async`]; `CASES` in
//! `storage-node/tests/crash_steps.rs` lists the crash steps with the operation each one
//! interrupts (`logical.after_subscribe`, a logical follower's copy, is exercised by
//! `storage-node/tests/follow.rs`, and `fork_snapshot.before_publish`, a fork snapshot
//! finished in the background, by a test of its own in `crash_steps.rs`). A name no step
//! has is accepted and never fires (so keep that list and the code in step); a malformed
//! entry makes the process refuse to start, so a typo in the syntax never silently tests
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable read at start-up.
pub const ENV: &str = "RAMIFY_FAILPOINTS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill,
    Sleep(u64),
}

#[derive(Debug)]
struct Point {
    action: Action,
    /// Fire only on this hit (1-based); `None` fires every time.
    on_hit: Option<u64>,
    hits: AtomicU64,
}

static POINTS: OnceLock<HashMap<String, Point>> = OnceLock::new();

/// Parses `RAMIFY_FAILPOINTS`; call once at start-up so a malformed value is refused
/// before the node serves anything. Without the variable, every failpoint is inert.
pub fn init_from_env() -> Result<(), String> {
    let spec = std::env::var(ENV).unwrap_or_default();
    let points = parse(&spec)?;
    if !points.is_empty() {
        tracing::warn!(
            failpoints = %spec,
            "{ENV} is set: this node will kill or stall itself at the named steps (a testing aid; never set it in production)"
        );
    }
    let _ = POINTS.set(points);
    Ok(())
}

fn parse(spec: &str) -> Result<HashMap<String, Point>, String> {
    let mut out = HashMap::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            format!("{ENV}: bad entry {entry:?}: {why}; expected NAME=kill, NAME=sleep(MS) or NAME=N*ACTION, comma-separated")
        };
        let (name, action) = entry.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (on_hit, action) = match action.split_once('*') {
            Some((n, a)) => {
                let n: u64 = n
                    .trim()
                    .parse()
                    .map_err(|_| bad("the count before '*' is not a number"))?;
                if n == 0 {
                    return Err(bad("counts start at 1"));
                }
                (Some(n), a.trim())
            }
            None => (None, action.trim()),
        };
        let action = if action == "kill" {
            Action::Kill
        } else if let Some(ms) = action
            .strip_prefix("sleep(")
            .and_then(|r| r.strip_suffix(')'))
        {
            Action::Sleep(
                ms.trim()
                    .parse()
                    .map_err(|_| bad("sleep takes milliseconds"))?,
            )
        } else {
            return Err(bad("unknown action"));
        };
        out.insert(
            name.trim().to_string(),
            Point {
                action,
                on_hit,
                hits: AtomicU64::new(0),
            },
        );
    }
    Ok(out)
}

fn due(name: &str) -> Option<Action> {
    let p = POINTS.get()?.get(name)?;
    let hit = p.hits.fetch_add(1, Ordering::SeqCst) + 1;
    match p.on_hit {
        Some(n) if n != hit => None,
        _ => Some(p.action),
    }
}

/// A step of a blocking operation (inside `spawn_blocking`, or synchronous code).
pub fn hit(name: &str) {
    match due(name) {
        None => {}
        Some(Action::Kill) => kill_self(name),
        Some(Action::Sleep(ms)) => std::thread::sleep(Duration::from_millis(ms)),
    }
}

/// A step of an async operation: like [`hit`], but a sleep does not block the runtime.
pub async fn hit_async(name: &str) {
    match due(name) {
        None => {}
        Some(Action::Kill) => kill_self(name),
        Some(Action::Sleep(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
    }
}

fn kill_self(name: &str) -> ! {
    // Written straight to stderr (unbuffered), so the test can tell which step died.
    eprintln!("failpoint {name}: SIGKILL");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
    // SIGKILL cannot be caught; this only runs if sending it failed.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_actions_and_counts() {
        let p = parse(" a=kill , b=sleep(250),c=3*kill ").unwrap();
        assert_eq!(p["a"].action, Action::Kill);
        assert_eq!(p["a"].on_hit, None);
        assert_eq!(p["b"].action, Action::Sleep(250));
        assert_eq!(p["c"].on_hit, Some(3));
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn refuses_malformed_entries() {
        for bad in ["a", "a=explode", "a=sleep(x)", "a=0*kill", "a=x*kill"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("expected NAME=kill"), "{bad}: {e}");
        }
    }
}
