//! The branch role: what a branch's login role may do inside its Postgres, as the SQL
//! that makes it so. Pure (statements in, nothing executed); the storage node runs them
//! over the compute's Unix socket as the bootstrap superuser.
//!
//! The role owns its database and may create databases and trusted extensions, read
//! every statistics view and setting (`pg_monitor`) and see and cancel its own sessions.
//! It is never a superuser and never holds CREATEROLE (on Postgres 15 and older,
//! CREATEROLE may grant any non-superuser role, predefined ones included), REPLICATION
//! or BYPASSRLS, and no role but a superuser is a member of the predefined roles that
//! reach the OS: running programs and reading or writing server files.
//!
//! Passwords are set as SCRAM-SHA-256 verifiers computed here, so the password itself
//! never reaches Postgres — not its log (`log_statement = all`), not an error message.

/// Predefined roles that reach the server's OS: never granted to anyone but a superuser.
pub const OS_ROLES: [&str; 3] = [
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
];

/// Predefined roles the branch role is given: statistics and settings views.
pub const GRANTED_ROLES: [&str; 1] = ["pg_monitor"];

/// Attributes of the branch role, every one stated so an inherited role is reset too.
const ATTRIBUTES: &str = "LOGIN CREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS";

/// The SCRAM-SHA-256 verifier of `password` with a fresh random salt, in the form
/// Postgres stores (`SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>`). Postgres takes
/// a password that already has this form as the verifier itself.
pub fn scram_verifier(password: &str) -> String {
    postgres_protocol::password::scram_sha_256(password.as_bytes())
}

/// Session settings for the control connection before any statement that carries a
/// verifier: nothing it runs is logged, whatever the branch's `postgresParameters` say.
pub const QUIET_SESSION: &str = "SET log_statement = 'none'; \
     SET log_min_duration_statement = -1; SET log_min_error_statement = 'panic'; \
     SET log_duration = off";

/// Attributes of a logical follower's reader role: it may log in, nothing more.
const READER_ATTRIBUTES: &str =
    "LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION NOBYPASSRLS";

/// Makes `user` the branch role with the password whose verifier is `verifier`: created,
/// or (a fork's inherited role) altered back to exactly the branch role's attributes —
/// a logical follower's reader role becomes writable again in its forks.
/// `user` must be a validated SQL identifier (`ramify_api::names`).
pub fn login_statements(user: &str, verifier: &str, role_exists: bool) -> Vec<String> {
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    let mut out = vec![format!(
        "{verb} ROLE {user} {ATTRIBUTES} PASSWORD '{}'",
        verifier.replace('\'', "''")
    )];
    if role_exists {
        out.push(format!(
            "ALTER ROLE {user} RESET default_transaction_read_only"
        ));
    }
    for role in GRANTED_ROLES {
        out.push(format!("GRANT {role} TO {user}"));
    }
    out
}

/// Makes `user` the read-only login of a logical follower: it reads every table
/// (`pg_read_all_data`) and owns nothing, so it can neither write the copied data nor
/// create objects (Postgres 15 gives PUBLIC no CREATE on `public`, and the follower's
/// schema was loaded without grants); its transactions are read-only by default too.
/// Writing stays the subscription's alone. `user` must be a validated identifier.
pub fn reader_statements(user: &str, verifier: &str, role_exists: bool) -> Vec<String> {
    let verb = if role_exists { "ALTER" } else { "CREATE" };
    let mut out = vec![format!(
        "{verb} ROLE {user} {READER_ATTRIBUTES} PASSWORD '{}'",
        verifier.replace('\'', "''")
    )];
    for role in GRANTED_ROLES.iter().chain(&["pg_read_all_data"]) {
        out.push(format!("GRANT {role} TO {user}"));
    }
    out.push(format!(
        "ALTER ROLE {user} SET default_transaction_read_only = on"
    ));
    out
}

/// One statement that takes away, from every role that is not a superuser, what a role
/// made before these rules (or by a tenant that had CREATEROLE) may still hold: the OS
/// roles (directly or through another role) and CREATEROLE, REPLICATION and BYPASSRLS.
/// Run on every start of a branch's credentials, so a fork of an old parent is safe too.
pub fn revoke_escapes() -> String {
    let os_roles = OS_ROLES
        .iter()
        .map(|r| format!("'{r}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "DO $ramify$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT g.rolname AS grp, m.rolname AS member, gr.rolname AS grantor
    FROM pg_auth_members a
    JOIN pg_roles g ON g.oid = a.roleid
    JOIN pg_roles m ON m.oid = a.member
    LEFT JOIN pg_roles gr ON gr.oid = a.grantor
    WHERE g.rolname IN ({os_roles}) AND NOT m.rolsuper
  LOOP
    IF current_setting('server_version_num')::int >= 160000 AND r.grantor IS NOT NULL THEN
      EXECUTE format('REVOKE %I FROM %I GRANTED BY %I', r.grp, r.member, r.grantor);
    ELSE
      EXECUTE format('REVOKE %I FROM %I', r.grp, r.member);
    END IF;
  END LOOP;
  FOR r IN
    SELECT rolname FROM pg_roles
    WHERE NOT rolsuper AND rolname !~ '^pg_' AND (rolcreaterole OR rolreplication OR rolbypassrls)
  LOOP
    EXECUTE format('ALTER ROLE %I NOCREATEROLE NOREPLICATION NOBYPASSRLS', r.rolname);
  END LOOP;
END
$ramify$"
    )
}

/// Makes every non-superuser login role except `user` unable to log in (`NOLOGIN`), for a
/// branch forked into another tenant's namespace. `user` must be a validated identifier.
pub fn disable_other_logins(user: &str) -> String {
    format!(
        "DO $ramify$
DECLARE r record;
BEGIN
  FOR r IN
    SELECT rolname FROM pg_roles
    WHERE rolcanlogin AND NOT rolsuper AND rolname <> '{user}' AND rolname !~ '^pg_'
  LOOP
    EXECUTE format('ALTER ROLE %I NOLOGIN', r.rolname);
  END LOOP;
END
$ramify$"
    )
}

/// Gives `user` the data of a database copied from another Postgres (a fork of a
/// following root), run in that database: membership in every other non-superuser role
/// (their tables, with their privileges), and ownership of what superusers own there
/// outside the system schemas — tables, views, sequences, schemas, routines and the
/// database itself (so the `public` schema too) — except what belongs to an extension.
/// Objects other roles own keep their owner. Every ascending sequence a column owns is
/// advanced past the column's largest value: a logical follower's rows arrive without
/// their sequences (a physical copy's are already past them, and stay). `user` must be a
/// validated identifier.
pub fn adopt_objects(user: &str) -> String {
    format!(
        "DO $ramify$
DECLARE r record; m bigint; lv bigint;
BEGIN
  FOR r IN
    SELECT d.objid::regclass AS seq, d.refobjid::regclass AS tbl, a.attname
    FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_sequence q ON q.seqrelid = s.oid AND q.seqincrement > 0
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
    JOIN pg_type t ON t.oid = a.atttypid AND t.typname IN ('int2', 'int4', 'int8')
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.deptype IN ('a', 'i')
  LOOP
    EXECUTE format('SELECT max(%I)::bigint FROM %s', r.attname, r.tbl) INTO m;
    EXECUTE format('SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s', r.seq) INTO lv;
    IF m IS NOT NULL AND m > lv THEN
      PERFORM setval(r.seq, m, true);
    END IF;
  END LOOP;
  FOR r IN
    SELECT g.rolname FROM pg_roles g
    WHERE NOT g.rolsuper AND g.rolname <> '{user}' AND g.rolname !~ '^pg_'
      AND NOT pg_has_role('{user}', g.oid, 'MEMBER')
      AND NOT pg_has_role(g.oid, '{user}', 'MEMBER')
  LOOP
    EXECUTE format('GRANT %I TO %I', r.rolname, '{user}');
  END LOOP;
  FOR r IN
    SELECT c.oid::regclass AS obj, c.relkind FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_roles o ON o.oid = c.relowner
    WHERE o.rolsuper AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
      AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND (d.deptype = 'e' OR (c.relkind = 'S' AND d.deptype IN ('a', 'i'))))
  LOOP
    EXECUTE format('ALTER %s %s OWNER TO %I',
      CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                     WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END,
      r.obj, '{user}');
  END LOOP;
  FOR r IN
    SELECT n.nspname FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
    WHERE o.rolsuper AND n.nspname NOT IN ('information_schema', 'public') AND n.nspname !~ '^pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO %I', r.nspname, '{user}');
  END LOOP;
  FOR r IN
    SELECT p.oid::regprocedure AS f FROM pg_proc p
    JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_roles o ON o.oid = p.proowner
    WHERE o.rolsuper AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                      AND d.objid = p.oid AND d.deptype = 'e')
  LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO %I', r.f, '{user}');
  END LOOP;
  IF (SELECT o.rolsuper FROM pg_database d JOIN pg_roles o ON o.oid = d.datdba
      WHERE d.datname = current_database()) THEN
    EXECUTE format('ALTER DATABASE %I OWNER TO %I', current_database(), '{user}');
  END IF;
END
$ramify$"
    )
}

/// `CREATE DATABASE` for the branch's database, owned by its role (its own statement:
/// it cannot run in a transaction block).
pub fn create_database(database: &str, user: &str) -> String {
    format!("CREATE DATABASE {database} OWNER {user}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_form_and_hides_the_password() {
        let v = scram_verifier("s3cretPassw0rd");
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("s3cretPassw0rd"));
        // A fresh salt every time.
        assert_ne!(v, scram_verifier("s3cretPassw0rd"));
    }

    #[test]
    fn role_gets_exactly_the_branch_attributes() {
        let s = login_statements("app", "SCRAM-SHA-256$4096:abc$def:ghi", false);
        assert_eq!(
            s,
            vec![
                "CREATE ROLE app LOGIN CREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION \
                 NOBYPASSRLS PASSWORD 'SCRAM-SHA-256$4096:abc$def:ghi'",
                "GRANT pg_monitor TO app",
            ]
        );
        let s = login_statements("app", "v", true);
        assert!(s[0].starts_with("ALTER ROLE app LOGIN CREATEDB NOCREATEROLE"));
        // A logical follower's reader, inherited by a fork, writes again there.
        assert_eq!(s[1], "ALTER ROLE app RESET default_transaction_read_only");
        for stmt in &s {
            for os in OS_ROLES {
                assert!(!stmt.contains(os), "{stmt}");
            }
        }
    }

    #[test]
    fn a_reader_may_log_in_and_read_and_nothing_more() {
        let s = reader_statements("app", "v", false);
        assert_eq!(
            s,
            vec![
                "CREATE ROLE app LOGIN NOCREATEDB NOCREATEROLE NOSUPERUSER NOREPLICATION \
                 NOBYPASSRLS PASSWORD 'v'",
                "GRANT pg_monitor TO app",
                "GRANT pg_read_all_data TO app",
                "ALTER ROLE app SET default_transaction_read_only = on",
            ]
        );
        assert!(
            reader_statements("app", "v", true)[0].starts_with("ALTER ROLE app LOGIN NOCREATEDB")
        );
    }

    #[test]
    fn revoke_covers_every_os_role() {
        let sql = revoke_escapes();
        for os in OS_ROLES {
            assert!(sql.contains(&format!("'{os}'")), "{os}");
        }
        assert!(sql.contains("NOCREATEROLE NOREPLICATION NOBYPASSRLS"));
    }
}
