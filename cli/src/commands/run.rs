//! `ramify run --from BRANCH [--at …] -- CMD ARGS…`: a branch per command run, always
//! deleted afterwards, and the command's exit status as ours.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use ramify_lifecycle::names::validate_branch_name;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::args::RunArgs;
use crate::backend::{Backend, Conn};

/// After forwarding a signal, how long the command gets to exit before it is killed.
const GRACE: Duration = Duration::from_secs(10);

/// Signals that end a run: forwarded to the command, then the branch is deleted.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

pub async fn run(backend: &dyn Backend, args: RunArgs) -> anyhow::Result<ExitCode> {
    let name = branch_name(&args.name_prefix)?;
    // Caught from here on: a Ctrl-C while the branch is being created still deletes it.
    let mut signals = catch_signals()?;
    let expires_at = chrono::Utc::now()
        + chrono::Duration::seconds(i64::try_from(args.expires_in).unwrap_or(i64::MAX / 1000));
    backend
        .create_scratch(&name, &args.from, args.at.as_ref(), args.expires_in)
        .await?;
    let outcome = async {
        // On a cluster: a port-forward, open until the command is done.
        let reach = backend.reach(&name, 0).await?;
        supervise(&reach.conn, &args.command, &mut signals).await
    }
    .await;
    let deleted = backend.delete_scratch(&name).await;
    let status = outcome?;
    if let Err(e) = deleted {
        eprintln!(
            "warning: could not delete branch {name}: {e:#}; it expires at {} and is deleted then anyway",
            expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(ExitCode::from(status))
}

/// `<prefix>-<8 random [a-z0-9]>`, checked as a branch name.
pub(super) fn branch_name(prefix: &str) -> anyhow::Result<String> {
    let random = ramify_lifecycle::password::generate()
        .map_err(|e| anyhow::anyhow!("cannot generate a branch name: {e}"))?;
    let suffix: String = random
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .take(8)
        .collect();
    let name = format!("{prefix}-{suffix}");
    if validate_branch_name(&name).is_err() || prefix.is_empty() {
        bail!(
            "invalid --name-prefix {prefix:?}: use up to 54 lowercase letters, digits and '-', starting with a letter (like ci)"
        );
    }
    Ok(name)
}

/// Every forwarded signal, as its number, on one channel.
fn catch_signals() -> anyhow::Result<mpsc::UnboundedReceiver<Signal>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for sig in FORWARDED {
        let mut stream = signal(SignalKind::from_raw(sig as i32))
            .with_context(|| format!("cannot handle {sig}"))?;
        let tx = tx.clone();
        tokio::spawn(async move {
            while stream.recv().await.is_some() {
                if tx.send(sig).is_err() {
                    break;
                }
            }
        });
    }
    Ok(rx)
}

/// The environment that points a command at `b`.
pub fn command_env(b: &Conn) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", b.uri.clone()),
        ("PGHOST", b.host.clone()),
        ("PGPORT", b.port.to_string()),
        ("PGUSER", b.user.clone()),
        ("PGPASSWORD", b.password.clone()),
        ("PGDATABASE", b.database.clone()),
        ("RAMIFY_BRANCH", b.name.clone()),
    ]
}

/// Runs the command to its end and returns its status as an exit code (128+N for death
/// by signal N). Signals ramify receives are passed on; a command still running
/// [`GRACE`] after one is killed.
async fn supervise(
    b: &Conn,
    command: &[String],
    signals: &mut mpsc::UnboundedReceiver<Signal>,
) -> anyhow::Result<u8> {
    if let Ok(sig) = signals.try_recv() {
        // Interrupted while the branch was being created: do not start the command.
        return Ok(128 + sig as u8);
    }
    let Some((program, args)) = command.split_first() else {
        bail!("no command to run: put it after --, like `ramify run --from main -- make test`");
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(command_env(b))
        // A service file would take precedence over the PG* variables in libpq.
        .env_remove("PGSERVICE")
        .env_remove("PGSERVICEFILE");
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("error: cannot run {program:?}: {e}");
            return Ok(code);
        }
    };
    let pid = child.id().and_then(|p| i32::try_from(p).ok());
    let mut deadline: Option<tokio::time::Instant> = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.context("waiting for the command")?,
            Some(sig) = signals.recv() => {
                if let Some(pid) = pid {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + GRACE);
            }
            () = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                eprintln!("the command did not exit {} s after the signal; killing it", GRACE.as_secs());
                let _ = child.start_kill();
                deadline = None;
            }
        }
    };
    Ok(exit_code(status))
}

/// A shell's view of a status: the exit code, or 128+N for death by signal N.
pub(super) fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(s)) => u8::try_from(128 + s).unwrap_or(255),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn names_are_prefixed_random_dns_labels() {
        let a = branch_name("ci").unwrap();
        let b = branch_name("ci").unwrap();
        assert!(a.starts_with("ci-") && a.len() == 11, "{a}");
        assert_ne!(a, b);
        validate_branch_name(&a).unwrap();
        for bad in ["", "CI", "ci_x", "-ci", &"x".repeat(60)] {
            let e = branch_name(bad).unwrap_err().to_string();
            assert!(e.contains("--name-prefix"), "{bad}: {e}");
        }
    }

    #[test]
    fn statuses_map_like_a_shell() {
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        // Killed by SIGKILL (9) / SIGINT (2).
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(2)), 130);
    }
}
