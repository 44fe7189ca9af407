//! `ramify psql NAME [-- ARGS…]`: psql on a branch, replacing this process.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use std::process::ExitCode;

use ramify_compute::PgBin;

use crate::backend::Backend;

/// `uri` with the password of its user-info part removed: the password travels in
/// PGPASSWORD instead, out of `ps` and shell history.
pub fn uri_without_password(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return uri.to_string();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    format!("{scheme}://{user}@{host}{tail}")
}

/// psql beside the installed Postgres, else the one on $PATH.
fn psql_program() -> PathBuf {
    PgBin::find(None)
        .ok()
        .and_then(|b| b.psql())
        .unwrap_or_else(|| PathBuf::from("psql"))
}

pub async fn run(backend: &dyn Backend, name: &str, args: &[String]) -> anyhow::Result<ExitCode> {
    let reach = backend.reach(name, 0).await?;
    let program = psql_program();
    let mut cmd = Command::new(&program);
    cmd.arg(uri_without_password(&reach.conn.uri))
        .args(args)
        .env("PGPASSWORD", &reach.conn.password);
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot run {}: {e}; install the Postgres client (apt-get install postgresql-client-15)",
            program.display()
        )
    };
    if reach.forward.is_none() {
        // Nothing of ours must outlive the call: exec only returns on failure, and on
        // success psql's exit code is ours.
        return Err(cannot(cmd.exec()));
    }
    // The port-forward lives in this process, so psql runs as a child. Ctrl-C is for psql
    // (it cancels the query): caught here so that it does not end the forward.
    let mut interrupts = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("cannot handle SIGINT: {e}"))?;
    tokio::spawn(async move { while interrupts.recv().await.is_some() {} });
    let mut child = tokio::process::Command::from(cmd).spawn().map_err(cannot)?;
    let status = child
        .wait()
        .await
        .map_err(|e| anyhow::anyhow!("waiting for psql: {e}"))?;
    drop(reach);
    Ok(ExitCode::from(super::run::exit_code(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_taken_out_of_the_uri() {
        assert_eq!(
            uri_without_password("postgresql://app:s3cr%40t@127.0.0.1:55432/app"),
            "postgresql://app@127.0.0.1:55432/app"
        );
        assert_eq!(
            uri_without_password("postgresql://app:pw@localhost:5432/app?sslmode=disable"),
            "postgresql://app@localhost:5432/app?sslmode=disable"
        );
        assert_eq!(
            uri_without_password("postgresql://app@localhost/app"),
            "postgresql://app@localhost/app"
        );
        assert_eq!(uri_without_password("not a uri"), "not a uri");
    }
}
