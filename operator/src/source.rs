//! The external Postgres a following branch streams from (`spec.source.external`): its
//! connection string, read from the Secret the branch names, split into what the storage
//! node may store and show (the string without its password) and the password, which it
//! only writes into the compute's password file.
//!
//! The string is checked before the storage node sees it, by the rules the node itself
//! enforces (`storage-node/src/node/follow.rs`, `check_uri`), so that a refusal names
//! the Secret at once: the node runs `pg_basebackup` and `psql` with it, as the uid that
//! owns every timeline, so a string naming a Unix socket (another branch's compute trusts
//! local connections) or a local file (another follower's password file, a client key)
//! would make the node act for a tenant on what is not theirs. A source is a
//! `postgresql://` URI naming one network host and only harmless parameters.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use ramify_api::names::SOURCE_URI_PARAMS as URI_PARAMS;
use ramify_crd::DatabaseBranch;

/// How a source must be written, for messages.
const URI_FORM: &str = "postgresql://ROLE:PASSWORD@HOST:PORT/DATABASE";

/// A source URI split into what may be shown and the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Conninfo {
    /// The URI as given, without its password.
    pub without_password: String,
    /// The password, from `user:password@` of a URI or a `password` parameter.
    pub password: Option<String>,
    /// Every parameter it sets, decoded, the password left out: `host`, `port`, `user`,
    /// `dbname` and whatever else, in order (libpq takes the last of a repeated one).
    pub params: Vec<(String, String)>,
    /// The names of the parameters its query (`?…`) sets, the password left out.
    pub query: Vec<String>,
}

impl std::fmt::Debug for Conninfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conninfo")
            .field("without_password", &self.without_password)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("params", &self.params)
            .field("query", &self.query)
            .finish()
    }
}

impl Conninfo {
    /// The last value of parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The database the string names (`postgres` when it names none): a following
    /// branch's connection Secret names it, and its forks connect to it.
    pub fn database(&self) -> String {
        self.param("dbname")
            .filter(|d| !d.is_empty())
            .unwrap_or("postgres")
            .to_string()
    }
}

/// Parses a libpq connection URI (`postgresql://…`, `postgres://…`). Errors never quote
/// the string: it may hold a password.
pub fn parse(conninfo: &str) -> Result<Conninfo, String> {
    let s = conninfo.trim();
    if s.contains(['\0', '\n', '\r']) {
        return Err("the connection string must be one line".into());
    }
    if s.is_empty() {
        return Err("the connection string is empty".into());
    }
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = s.strip_prefix(scheme) {
            return parse_uri(scheme, rest);
        }
    }
    Err(format!(
        "the connection string is not a postgresql:// URI: write it as {URI_FORM}"
    ))
}

fn parse_uri(scheme: &str, rest: &str) -> Result<Conninfo, String> {
    let mut params = Vec::new();
    let mut query_keys = Vec::new();
    let mut password = None;
    // As libpq: user information runs up to an '@' met before any '/'.
    let stop = rest.find(['@', '/']).unwrap_or(rest.len());
    let (userinfo, after) = match rest.as_bytes().get(stop) {
        Some(b'@') => (Some(&rest[..stop]), &rest[stop + 1..]),
        _ => (None, rest),
    };
    let mut shown = String::from(scheme);
    if let Some(ui) = userinfo {
        let (user, pw) = match ui.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (ui, None),
        };
        if !user.is_empty() {
            params.push(("user".to_string(), decode(user, "the user name")?));
        }
        if let Some(p) = pw {
            password = Some(decode(p, "the password")?);
        }
        shown.push_str(user);
        shown.push('@');
    }
    let (before_query, query) = match after.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (after, None),
    };
    let (netloc, path) = match before_query.split_once('/') {
        Some((n, p)) => (n, Some(p)),
        None => (before_query, None),
    };
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in netloc.split(',') {
        let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
            let (h, tail) = v6
                .split_once(']')
                .ok_or("an IPv6 host in the URI lacks its closing ']'")?;
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match entry.split_once(':') {
                Some((h, p)) => (decode(h, "a host name")?, Some(p)),
                None => (decode(entry, "a host name")?, None),
            }
        };
        hosts.push(host);
        ports.push(port.unwrap_or("").to_string());
    }
    params.push(("host".to_string(), hosts.join(",")));
    if ports.iter().any(|p| !p.is_empty()) {
        params.push(("port".to_string(), ports.join(",")));
    }
    shown.push_str(netloc);
    if let Some(p) = path {
        if !p.is_empty() {
            params.push(("dbname".to_string(), decode(p, "the database name")?));
        }
        shown.push('/');
        shown.push_str(p);
    }
    if let Some(q) = query {
        let mut kept = Vec::new();
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                "a URI query parameter has no '=': write key=value pairs separated by '&'"
                    .to_string()
            })?;
            let key = decode(k, "a parameter name")?;
            let value = decode(v, "a parameter value")?;
            if key == "password" {
                password = Some(value);
                continue;
            }
            query_keys.push(key.clone());
            params.push((key, value));
            kept.push(kv);
        }
        if !kept.is_empty() {
            shown.push('?');
            shown.push_str(&kept.join("&"));
        }
    }
    Ok(Conninfo {
        without_password: shown,
        password,
        params,
        query: query_keys,
    })
}

/// `%XX` sequences of a URI component, decoded to UTF-8.
fn decode(s: &str, what: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{what} in the URI has an invalid %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what} in the URI is not UTF-8"))
}

/// Refuses a source the storage node must not connect to for a tenant: anything but one
/// network host (no host means a Unix socket, as does a socket directory), parameters
/// outside [`URI_PARAMS`], no user, a password the node would refuse.
pub fn check(c: &Conninfo) -> Result<(), String> {
    if let Some(k) = c.query.iter().find(|k| !URI_PARAMS.contains(&k.as_str())) {
        return Err(format!(
            "parameter {k:?} is not accepted: the storage node connects as the owner of every branch's files and sockets, so parameters naming hosts or files of its own are refused (accepted: {})",
            URI_PARAMS.join(", ")
        ));
    }
    for (_, host) in c.params.iter().filter(|(k, _)| k == "host") {
        check_host(host)?;
    }
    if let Some(port) = c.param("port") {
        if port.parse::<u16>().is_err() {
            return Err("the port is not a port number".into());
        }
    }
    if c.param("user").is_none_or(str::is_empty) {
        return Err(format!(
            "the URI names no user: give the replication role, {URI_FORM}"
        ));
    }
    if c.password
        .as_deref()
        .is_some_and(|p| p.contains(['\0', '\n', '\r']))
    {
        return Err("the password must not contain a line break".into());
    }
    Ok(())
}

/// One network host: a DNS name or an IP address, never empty (libpq's default Unix
/// socket), a socket directory or a list.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err(format!(
            "the URI names no host (libpq would use a local Unix socket): {URI_FORM}"
        ));
    }
    if host.starts_with(['/', '@']) {
        return Err(format!(
            "the URI names the Unix socket directory {host:?}: the source must be reached over TCP, by host name or address"
        ));
    }
    if host.contains(',') {
        return Err(
            "the URI names several hosts: name one (a Service or a DNS name in front of them)"
                .into(),
        );
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':')
    {
        return Err(format!(
            "the host {host:?} is neither a DNS name nor an IP address"
        ));
    }
    Ok(())
}

/// Why the source of a following branch cannot be used yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceProblem {
    /// The Secret (or its key) does not exist: it may be created after the branch.
    Missing(String),
    /// The Secret holds something the operator refuses.
    Invalid(String),
    /// The source's host is not one the installation lets branches follow.
    NotAllowed(String),
}

/// Whether `host` is one of `allowed` (see `Config::follow_allowed_hosts`): equal to an
/// entry, under a `*.SUFFIX` entry, or anything with `*`. Case does not matter.
pub fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.to_ascii_lowercase();
    allowed
        .iter()
        .map(|a| a.trim().to_ascii_lowercase())
        .any(|a| {
            a == "*"
                || a == host
                || a.strip_prefix("*.").is_some_and(|suffix| {
                    !suffix.is_empty() && host.ends_with(&format!(".{suffix}"))
                })
        })
}

/// The branch's source as the storage node takes it: read from its Secret, checked.
pub async fn read(
    client: &kube::Client,
    b: &DatabaseBranch,
    allowed_hosts: &[String],
) -> Result<Result<ramify_api::FollowSource, SourceProblem>, kube::Error> {
    let Some(ext) = b.external_source() else {
        return Ok(Err(SourceProblem::Invalid(
            "spec.source.external is missing".into(),
        )));
    };
    let ns = b.metadata.namespace.clone().unwrap_or_default();
    let r = &ext.connection_secret_ref;
    let where_ = format!("Secret {ns}/{} key {:?}", r.name, r.key);
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), &ns)
        .get_opt(&r.name)
        .await?
    else {
        return Ok(Err(SourceProblem::Missing(format!(
            "waiting for {where_} (spec.source.external.connectionSecretRef): the Secret does not exist"
        ))));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|v| v.0.clone());
    let Some(value) = value else {
        return Ok(Err(SourceProblem::Missing(format!(
            "waiting for {where_} (spec.source.external.connectionSecretRef): the Secret has no such key"
        ))));
    };
    let Ok(text) = String::from_utf8(value) else {
        return Ok(Err(SourceProblem::Invalid(format!(
            "{where_} is not UTF-8 text"
        ))));
    };
    let parsed = match parse(&text)
        .and_then(|c| check(&c).map(|()| c))
        .map_err(|e| SourceProblem::Invalid(format!("{where_}: {e}")))
    {
        Ok(c) => {
            let host = c.param("host").unwrap_or_default();
            if host_allowed(host, allowed_hosts) {
                Ok(c)
            } else {
                Err(SourceProblem::NotAllowed(format!(
                    "{where_} names host {host:?}, which this installation does not let branches follow; an administrator allows it in the chart's following.allowedHosts (the storage nodes copy a followed source with the rights of every branch's files: list only sources you trust)"
                )))
            }
        }
        Err(e) => Err(e),
    };
    Ok(parsed.map(|c| ramify_api::FollowSource {
        conninfo: c.without_password,
        password: c.password,
        slot: ext.slot.clone(),
        mode: ext.mode.unwrap_or_default().into(),
        publication: ext.publication.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "s3cr:t@/pw?&x";

    #[test]
    fn only_the_hosts_an_administrator_lists_may_be_followed() {
        let allowed = |list: &[&str], host: &str| {
            host_allowed(
                host,
                &list.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        assert!(!allowed(&[], "db.prod.svc"), "none listed: none allowed");
        assert!(allowed(&["db.prod.svc"], "DB.prod.svc"));
        assert!(!allowed(&["db.prod.svc"], "db.prod.svc.evil.example"));
        assert!(allowed(&["*.prod.svc"], "db.prod.svc"));
        assert!(!allowed(&["*.prod.svc"], "prod.svc"));
        assert!(!allowed(&["*.prod.svc"], "db.xprod.svc"));
        assert!(!allowed(&["*."], "db.prod.svc"));
        assert!(allowed(&[" 10.0.0.7 "], "10.0.0.7"));
        assert!(allowed(&["*"], "anything.example"));
    }

    #[test]
    fn a_uri_loses_its_password_and_keeps_the_rest() {
        let c = parse("postgresql://replicator:s3cr%3At%40%2Fpw%3F%26x@prod-db.prod.svc:5432/bank?sslmode=require&application_name=x").unwrap();
        assert_eq!(
            c.without_password,
            "postgresql://replicator@prod-db.prod.svc:5432/bank?sslmode=require&application_name=x"
        );
        assert_eq!(c.password.as_deref(), Some(PW));
        assert_eq!(c.param("host"), Some("prod-db.prod.svc"));
        assert_eq!(c.param("port"), Some("5432"));
        assert_eq!(c.param("user"), Some("replicator"));
        assert_eq!(c.database(), "bank");
        assert_eq!(c.param("sslmode"), Some("require"));
        check(&c).unwrap();
        assert!(!format!("{c:?}").contains("s3cr"), "Debug never shows it");

        let c = parse("postgres://replicator@db?password=p%40ss&sslmode=require").unwrap();
        assert_eq!(
            c.without_password,
            "postgres://replicator@db?sslmode=require"
        );
        assert_eq!(c.password.as_deref(), Some("p@ss"));
        assert_eq!(c.database(), "postgres");

        let c = parse(" postgresql://r:pw@[fd00::1]:6432,db2:5433/app ").unwrap();
        assert_eq!(
            c.without_password,
            "postgresql://r@[fd00::1]:6432,db2:5433/app"
        );
        assert_eq!(c.param("host"), Some("fd00::1,db2"));
        assert_eq!(c.param("port"), Some("6432,5433"));
        assert_eq!(c.password.as_deref(), Some("pw"));

        let c = parse("postgresql://replicator@db:5432/postgres").unwrap();
        assert_eq!(c.password, None);
        assert_eq!(
            c.without_password,
            "postgresql://replicator@db:5432/postgres"
        );
    }

    #[test]
    fn only_a_uri_naming_one_network_host_is_taken() {
        for ok in [
            "postgresql://rep:pw@db.example:5432/postgres",
            "postgres://rep@10.0.0.7/app?sslmode=require&application_name=x",
            "postgresql://rep@[::1]:5433/postgres",
            "postgresql://rep@prod-db.prod.svc.cluster.local",
        ] {
            let c = parse(ok).unwrap();
            assert!(check(&c).is_ok(), "{ok}: {:?}", check(&c));
        }
        let e = parse("host=db user=rep password=pw").unwrap_err();
        assert!(e.contains("postgresql://ROLE:PASSWORD@HOST"), "{e}");
        let e = parse("postgresql://a,b/x")
            .and_then(|c| check(&c))
            .unwrap_err();
        assert!(e.contains("several hosts"), "{e}");
    }

    #[test]
    fn the_node_is_never_pointed_at_its_own_files_or_sockets() {
        for bad in [
            // No host: libpq's default Unix socket.
            "postgresql://replicator:pw@/postgres",
            // Another branch's compute trusts its local socket.
            "postgresql://postgres@%2Fvar%2Flib%2Framify%2Ftimelines%2Fx%2Frun/postgres",
            "postgresql://postgres@db/postgres?host=/var/lib/ramify/timelines/x/run",
            "postgresql://postgres@@abstract/postgres",
            // Another follower's password file, a client key, a service file.
            "postgresql://replicator@db/postgres?passfile=/var/lib/ramify/timelines/x/run/source.pass",
            "postgresql://r@db/x?sslkey=/etc/key",
            "postgresql://r@db/x?service=prod",
            "postgresql://r@db/x?dbname=host%3D%2Ftmp",
            // No user; not a port.
            "postgresql://db:5432/postgres",
            "postgresql://r@db:99999/postgres",
        ] {
            let e = parse(bad).and_then(|c| check(&c));
            assert!(e.is_err(), "{bad} was taken");
        }
        let e = parse("postgresql://r:pw@db/postgres?passfile=/x")
            .and_then(|c| check(&c))
            .unwrap_err();
        assert!(e.contains("\"passfile\" is not accepted"), "{e}");
        let e = parse("postgresql://r:pw@%2Frun/postgres")
            .and_then(|c| check(&c))
            .unwrap_err();
        assert!(e.contains("over TCP"), "{e}");
    }

    #[test]
    fn errors_never_quote_the_string() {
        for bad in [
            "mysql://root:hunter2hunter2@db/x",
            "hunter2hunter2",
            "host=db password='hunter2hunter2",
            "postgresql://r:hunter2%zz@db/x",
            "postgresql://r:hunter2hunter2@db/x?a",
            "postgresql://r:pw\nhunter2hunter2@db/x",
            "",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }

    #[test]
    fn what_the_node_sees_has_no_password() {
        // The storage node refuses a conninfo with a password in it; every form loses it.
        for s in [
            "postgresql://r:pw@db/x",
            "postgresql://r@db/x?password=pw",
            "postgres://r@db/x?sslmode=require&password=pw",
        ] {
            let c = parse(s).unwrap();
            assert!(!c.without_password.contains("pw"), "{s}: {c:?}");
            assert!(!c.without_password.contains("password"), "{s}: {c:?}");
            assert_eq!(c.password.as_deref(), Some("pw"), "{s}");
        }
    }
}
