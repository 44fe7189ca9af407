//! The `main` of a `harness = false` benchmark: a two-worker runtime, Ctrl-C turned into
//! an error (so the benchmark's fixtures are dropped and clean up), and an exit status.

use std::future::Future;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

/// Runs `bench` to completion; `name` prefixes the error line.
pub fn main<F>(name: &str, bench: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot build the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = bench => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (Ctrl-C); cleaning up")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name} failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a progress line to stderr with the time since the first one.
pub fn progress(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    eprintln!("[{:>4}:{:04.1}] {msg}", (t / 60.0) as u64, t % 60.0);
}
