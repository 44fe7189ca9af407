//! Errors of schema extraction and data comparison.

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Connecting to a database failed.
    #[error("could not connect to {target}: {source}")]
    Connect {
        /// The connection string, without its password.
        target: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The connection string's TLS settings cannot be served.
    #[error("could not connect to {target}: {reason}")]
    Tls {
        /// The connection string, without its password.
        target: String,
        /// What is wrong and what is valid.
        reason: String,
    },
    /// A catalog or data query failed.
    #[error("could not {what}: {source}")]
    Query {
        /// What was being done.
        what: String,
        /// The driver's error (with the server's message).
        #[source]
        source: tokio_postgres::Error,
    },
    /// A catalog column did not have the expected type (a Postgres version the
    /// extraction does not know).
    #[error("unexpected catalog value in column `{column}`: {source}")]
    Decode {
        /// The result column.
        column: &'static str,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A data stream was not in the order the merge needs (a collation or type mismatch
    /// between the two sides); no counts are reported rather than wrong ones.
    #[error("table {table}: rows of side {side} are not in key order; cannot compare by key")]
    Order {
        /// The table.
        table: String,
        /// `A` or `B`.
        side: &'static str,
    },
}

impl DiffError {
    /// A `map_err` adaptor for a failed query.
    pub(crate) fn query(what: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Self {
        let what = what.into();
        move |source| DiffError::Query { what, source }
    }
}

/// Removes `password=…` from a libpq key/value string or the password of a URI, for
/// error messages.
pub(crate) fn redact(conn_str: &str) -> String {
    if let Some(rest) = conn_str
        .strip_prefix("postgres://")
        .or_else(|| conn_str.strip_prefix("postgresql://"))
    {
        let scheme = &conn_str[..conn_str.len() - rest.len()];
        let (auth, host) = match rest.find('@') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => return conn_str.to_owned(),
        };
        let user = auth.split(':').next().unwrap_or("");
        return format!("{scheme}{user}@{host}");
    }
    conn_str
        .split_whitespace()
        .filter(|kv| !kv.starts_with("password="))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("host=/tmp port=5 password=secret user=u"),
            "host=/tmp port=5 user=u"
        );
        assert_eq!(
            redact("postgres://u:secret@127.0.0.1:5432/db"),
            "postgres://u@127.0.0.1:5432/db"
        );
        assert_eq!(redact("postgresql://h/db"), "postgresql://h/db");
    }
}
