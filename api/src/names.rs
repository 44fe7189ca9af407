//! Names users choose (snapshots), checked in one place so every component agrees.

/// Checks a snapshot name: 1–63 characters of `a-z`, `0-9`, `-`, `_`, `.`, starting
/// with a letter or digit. Names become directory names, so nothing else is allowed.
pub fn validate_snapshot_name(name: &str) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid snapshot name {name:?}: use 1-63 characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a Postgres role or database name Ramify creates: 1–63 characters of `a-z`,
/// `0-9`, `_`, starting with a letter or `_`, and not a name Postgres reserves. Such a
/// name needs no quoting in SQL and means the same to every client.
pub fn validate_sql_identifier(what: &str, name: &str) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid {what} {name:?}: use 1-63 characters of a-z, 0-9 and '_', starting with a letter or '_'"
        ));
    }
    if name.starts_with("pg_") || ["postgres", "public", "template0", "template1"].contains(&name) {
        return Err(format!(
            "invalid {what} {name:?}: names starting with pg_ and postgres, public, template0, template1 are reserved"
        ));
    }
    Ok(())
}

/// The connection parameters a following root's source URI may carry (the storage node
/// and the operator check by this one list): how to reach a network host and talk to
/// it. Anything else — `host` in the query (a socket directory of the node, where its
/// computes trust the bootstrap superuser), `passfile`, `service`, `sslkey`,
/// `sslrootcert`, … (files of the machine that connects) — is refused.
pub const SOURCE_URI_PARAMS: &[&str] = &[
    "sslmode",
    "sslsni",
    "sslcompression",
    "channel_binding",
    "gssencmode",
    "connect_timeout",
    "application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
];

/// Checks the name of a database a branch takes over from a followed Postgres (a fork
/// of a following root connects to its source's database): the syntax of
/// [`validate_sql_identifier`], where `postgres` is allowed (it exists, nothing is made).
pub fn validate_source_database(name: &str) -> Result<(), String> {
    if name == "postgres" {
        return Ok(());
    }
    validate_sql_identifier("source database name", name)
}

/// Checks a password Ramify sets: 16–128 characters of `A-Z a-z 0-9 . _ ~ -` (URI
/// "unreserved" characters), so it goes into SQL literals and connection URIs unescaped.
pub fn validate_password(password: &str) -> Result<(), String> {
    let ok = password
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b));
    if !(16..=128).contains(&password.len()) || !ok {
        return Err(
            "invalid password: use 16-128 characters of A-Z, a-z, 0-9, '.', '_', '~' and '-'"
                .into(),
        );
    }
    Ok(())
}

/// The database a `postgresql://` URI names (`postgres` when it names none): where a
/// following root's data is, and what forks of it connect to.
pub fn uri_database(uri: &str) -> String {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .unwrap_or("");
    let path = rest.find('/').map(|i| &rest[i + 1..]).unwrap_or("");
    let db = path.split('?').next().unwrap_or("");
    if db.is_empty() {
        "postgres".into()
    } else {
        db.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_database_is_the_path_or_postgres() {
        assert_eq!(uri_database("postgresql://r@h:5/prod?sslmode=x"), "prod");
        assert_eq!(uri_database("postgresql://r@h:5"), "postgres");
        assert_eq!(uri_database("postgres://h/"), "postgres");
    }

    #[test]
    fn snapshot_names() {
        for ok in ["a", "before-migration", "agent.step_3", "0"] {
            validate_snapshot_name(ok).unwrap();
        }
        for bad in ["", "-a", "A", "a/b", "..", ".x", "a b", &"x".repeat(64)] {
            assert!(validate_snapshot_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sql_identifiers() {
        for ok in ["app", "_x", "alice_2"] {
            validate_sql_identifier("role", ok).unwrap();
        }
        for bad in [
            "",
            "App",
            "1a",
            "a-b",
            "postgres",
            "pg_monitor",
            "a;drop",
            &"x".repeat(64),
        ] {
            assert!(validate_sql_identifier("role", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords() {
        validate_password("abcdefghijklmnop").unwrap();
        for bad in [
            "short",
            "abcdefgh'ijklmnop",
            "abcdefgh ijklmnop",
            "abcdefgh\\ijklmnop",
            "abcdefgh@ijklmnop",
        ] {
            assert!(validate_password(bad).is_err(), "{bad}");
        }
    }
}
