//! `ramify psql NAME [-- ARGS…]`: psql on a branch, replacing this process.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use ramify_compute::PgBin;

use super::Context;

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

pub async fn run(ctx: &Context, name: &str, args: &[String]) -> anyhow::Result<()> {
    let b = ctx.client()?.get_branch(name).await?;
    let program = psql_program();
    // exec only returns on failure; on success psql's exit code is ours.
    let err = Command::new(&program)
        .arg(uri_without_password(&b.uri))
        .args(args)
        .env("PGPASSWORD", &b.password)
        .exec();
    anyhow::bail!(
        "cannot run {}: {err}; install the Postgres client (apt-get install postgresql-client-15)",
        program.display()
    )
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
