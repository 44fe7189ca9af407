//! `branch create --follow URI`: the source a following root copies and streams from,
//! with its password taken out of the URI (or read from `--password-file`, or from
//! `PGPASSFILE` / `~/.pgpass` as libpq would), so it is never stored or echoed.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ramify_api::FollowSource;

/// The source for `--follow URI [--slot S] [--password-file F]`.
pub fn source(
    uri: &str,
    slot: Option<String>,
    password_file: Option<&Path>,
) -> anyhow::Result<FollowSource> {
    let (conninfo, in_uri) = take_password(uri)?;
    let password = match (in_uri, password_file) {
        (Some(_), Some(_)) => bail!(
            "the --follow URI has a password and --password-file names another: give one of them"
        ),
        (Some(p), None) => Some(p),
        (None, Some(f)) => Some(read_password_file(f)?),
        (None, None) => pgpass_lookup(&conninfo)?,
    };
    Ok(FollowSource {
        conninfo,
        password,
        slot,
        ..Default::default()
    })
}

/// Splits `postgresql://user:secret@host/db` into the URI without the secret and the
/// (percent-decoded) secret. Only URIs are taken: a `key=value` string is refused with
/// the URI form to use.
fn take_password(uri: &str) -> anyhow::Result<(String, Option<String>)> {
    let uri = uri.trim();
    let Some((scheme, rest)) = uri
        .strip_prefix("postgresql://")
        .map(|r| ("postgresql://", r))
        .or_else(|| uri.strip_prefix("postgres://").map(|r| ("postgres://", r)))
    else {
        bail!(
            "--follow takes a URI like postgresql://replicator@db.example:5432/postgres (got something that does not start with postgresql://)"
        );
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if tail
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv.starts_with("password=")))
    {
        bail!("put the password in the URI's user part (postgresql://user:PASSWORD@host/db) or in --password-file, not in a password= parameter");
    }
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return Ok((uri.to_string(), None));
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return Ok((uri.to_string(), None));
    };
    let password = percent_decode(password).context("the URI's password")?;
    Ok((format!("{scheme}{user}@{host}{tail}"), Some(password)))
}

/// The URI `conninfo` (as [`source`] returns it: no password) with `password` put back
/// into its user part, `%`-encoded: what a cluster's Secret holds for the operator,
/// which takes it out again before anything is shown or logged.
pub fn with_password(conninfo: &str, password: Option<&str>) -> String {
    let Some(password) = password else {
        return conninfo.to_string();
    };
    let (scheme, rest) = conninfo.split_at(conninfo.find("://").map_or(0, |i| i + 3));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let secret = crate::backend::uri_component(password);
    match authority.rsplit_once('@') {
        Some((user, host)) => format!("{scheme}{user}:{secret}@{host}{tail}"),
        None => format!("{scheme}:{secret}@{authority}{tail}"),
    }
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .context("a % not followed by two hex digits")?;
            out.push(u8::from_str_radix(hex, 16).context("a % not followed by two hex digits")?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("not UTF-8 once decoded")
}

fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --password-file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        bail!(
            "--password-file {} is empty: its first line is the password",
            path.display()
        );
    }
    Ok(line)
}

/// The password libpq would take from `PGPASSFILE` (or `~/.pgpass`) for this URI's host,
/// port, database and user; `None` when there is no file or no line matches.
fn pgpass_lookup(uri: &str) -> anyhow::Result<Option<String>> {
    let path = match std::env::var_os("PGPASSFILE") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(h) => PathBuf::from(h).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let t = Target::of(uri);
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| t.matches(l)))
}

/// What a `.pgpass` line is matched against.
struct Target {
    host: String,
    port: String,
    database: String,
    user: String,
}

impl Target {
    fn of(uri: &str) -> Target {
        let rest = uri
            .strip_prefix("postgresql://")
            .or_else(|| uri.strip_prefix("postgres://"))
            .unwrap_or(uri);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (u.split(':').next().unwrap_or("").to_string(), h),
            None => (std::env::var("PGUSER").unwrap_or_default(), authority),
        };
        let (host, port) = match hostport.strip_prefix('[') {
            // [v6 address] or [v6 address]:port
            Some(v6) => match v6.split_once(']') {
                Some((h, rest)) => (h.to_string(), rest.trim_start_matches(':').to_string()),
                None => (v6.to_string(), String::new()),
            },
            None => match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.to_string()),
                None => (hostport.to_string(), String::new()),
            },
        };
        let database = tail
            .strip_prefix('/')
            .map(|d| d.split('?').next().unwrap_or(""))
            .filter(|d| !d.is_empty())
            .unwrap_or(&user)
            .to_string();
        Target {
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host
            },
            port: if port.is_empty() { "5432".into() } else { port },
            database,
            user,
        }
    }

    /// The password of a `host:port:database:user:password` line that matches (`*`
    /// matches anything; `\:` and `\\` are escapes).
    fn matches(&self, line: &str) -> Option<String> {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => cur.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            return None;
        }
        let ok = |pat: &str, v: &str| pat == "*" || pat == v;
        (ok(&fields[0], &self.host)
            && ok(&fields[1], &self.port)
            && ok(&fields[2], &self.database)
            && ok(&fields[3], &self.user))
        .then(|| fields[4].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_uri() {
        let (c, p) =
            take_password("postgresql://rep:s%40cret:x@db.example:5433/postgres?sslmode=require")
                .unwrap();
        assert_eq!(
            c,
            "postgresql://rep@db.example:5433/postgres?sslmode=require"
        );
        assert_eq!(p.as_deref(), Some("s@cret:x"));
        let (c, p) = take_password("postgres://rep@db/postgres").unwrap();
        assert_eq!((c.as_str(), p), ("postgres://rep@db/postgres", None));
        assert!(take_password("host=db user=rep").is_err());
        assert!(take_password("postgresql://rep@db/postgres?password=x").is_err());
    }

    #[test]
    fn a_password_put_back_comes_out_the_same() {
        for (conninfo, password, back) in [
            (
                "postgresql://replicator@db.example:5432/postgres",
                "p@ss:w/rd%20?#&",
                "postgresql://replicator@db.example:5432/postgres",
            ),
            (
                "postgres://rep@[::1]/app?sslmode=require",
                "plain",
                "postgres://rep@[::1]/app?sslmode=require",
            ),
            // No user: libpq's default user, with this password.
            (
                "postgresql://db.example/postgres",
                "no user",
                "postgresql://@db.example/postgres",
            ),
        ] {
            let uri = with_password(conninfo, Some(password));
            assert_eq!(
                take_password(&uri).unwrap(),
                (back.to_string(), Some(password.to_string())),
                "{uri}"
            );
        }
        assert_eq!(
            with_password("postgresql://r@h/d", None),
            "postgresql://r@h/d"
        );
    }

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let t = Target::of("postgresql://rep@db.example:5433/prod");
        assert_eq!(
            t.matches("db.example:5433:prod:rep:pw").as_deref(),
            Some("pw")
        );
        assert_eq!(t.matches("*:*:*:rep:a\\:b").as_deref(), Some("a:b"));
        assert_eq!(t.matches("db.example:5432:prod:rep:pw"), None);
        assert_eq!(t.matches("other:*:*:*:pw"), None);
        let t = Target::of("postgresql://rep@[::1]/postgres");
        assert_eq!((t.host.as_str(), t.port.as_str()), ("::1", "5432"));
    }

    #[test]
    fn one_password_source_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").unwrap();
        let s = source("postgresql://rep@db/postgres", None, Some(&f)).unwrap();
        assert_eq!(s.password.as_deref(), Some("from-file"));
        assert!(source("postgresql://rep:x@db/postgres", None, Some(&f)).is_err());
        std::fs::write(&f, "").unwrap();
        assert!(source("postgresql://rep@db/postgres", None, Some(&f)).is_err());
    }
}
