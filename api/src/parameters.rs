//! Which Postgres parameters a branch may set: the one list the CRD's CEL rule, the
//! operator and the compute crate all enforce.
//!
//! A branch's `postgresParameters` are written into its compute's configuration, where
//! they apply to the whole server with the OS user's rights. So every parameter that
//! runs a program, loads a library, names a file or directory, changes recovery,
//! replication or archiving, or switches off a safety check is refused, and so is every
//! setting Ramify itself manages. The list is a superset of CloudNativePG's fixed and
//! blocked parameters. Everything else — memory, planner, logging levels, autovacuum,
//! locale, an extension's own `name.setting` — is the user's.

/// Why a parameter cannot be set, in words that end the error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server runs it as a shell command.
    RunsProgram,
    /// It makes the server load a shared library.
    LoadsCode,
    /// It names a file, a directory or file permissions on the server.
    NamesFile,
    /// It changes how the server recovers, replicates or archives WAL, which Ramify's
    /// forks, restores and history depend on.
    History,
    /// It switches off a check that keeps data correct or private.
    Safety,
    /// Ramify sets it (connections go through Ramify's proxy, which speaks TLS).
    Managed,
}

impl Refusal {
    /// The reason, as the end of a sentence.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::RunsProgram => "it runs a program on the server",
            Refusal::LoadsCode => "it loads code into the server",
            Refusal::NamesFile => "it names a file or directory on the server",
            Refusal::History => {
                "it changes recovery, replication or archiving, which Ramify manages"
            }
            Refusal::Safety => "it switches off a check that keeps data correct or private",
            Refusal::Managed => "Ramify manages it",
        }
    }
}

/// Every refused parameter by exact name, with the reason.
pub const REFUSED: &[(&str, Refusal)] = &[
    // Programs.
    ("archive_command", Refusal::RunsProgram),
    ("archive_cleanup_command", Refusal::RunsProgram),
    ("recovery_end_command", Refusal::RunsProgram),
    ("restore_command", Refusal::RunsProgram),
    ("ssl_passphrase_command", Refusal::RunsProgram),
    (
        "ssl_passphrase_command_supports_reload",
        Refusal::RunsProgram,
    ),
    // Code.
    ("shared_preload_libraries", Refusal::LoadsCode),
    ("local_preload_libraries", Refusal::LoadsCode),
    ("session_preload_libraries", Refusal::LoadsCode),
    ("dynamic_library_path", Refusal::LoadsCode),
    ("jit_provider", Refusal::LoadsCode),
    ("archive_library", Refusal::LoadsCode),
    // Files, directories and their permissions.
    ("data_directory", Refusal::NamesFile),
    ("config_file", Refusal::NamesFile),
    ("hba_file", Refusal::NamesFile),
    ("ident_file", Refusal::NamesFile),
    ("external_pid_file", Refusal::NamesFile),
    ("include", Refusal::NamesFile),
    ("include_dir", Refusal::NamesFile),
    ("include_if_exists", Refusal::NamesFile),
    ("unix_socket_directories", Refusal::NamesFile),
    ("unix_socket_group", Refusal::NamesFile),
    ("unix_socket_permissions", Refusal::NamesFile),
    ("logging_collector", Refusal::NamesFile),
    ("log_destination", Refusal::NamesFile),
    ("log_directory", Refusal::NamesFile),
    ("log_filename", Refusal::NamesFile),
    ("log_file_mode", Refusal::NamesFile),
    ("log_rotation_age", Refusal::NamesFile),
    ("log_rotation_size", Refusal::NamesFile),
    ("log_truncate_on_rotation", Refusal::NamesFile),
    ("stats_temp_directory", Refusal::NamesFile),
    ("krb_server_keyfile", Refusal::NamesFile),
    ("promote_trigger_file", Refusal::NamesFile),
    ("event_source", Refusal::NamesFile),
    // Recovery, replication, archiving, durability.
    ("archive_mode", Refusal::History),
    ("archive_timeout", Refusal::History),
    ("wal_level", Refusal::History),
    ("wal_log_hints", Refusal::History),
    ("wal_compression", Refusal::History),
    ("full_page_writes", Refusal::History),
    ("fsync", Refusal::History),
    ("data_sync_retry", Refusal::History),
    ("restart_after_crash", Refusal::History),
    ("hot_standby", Refusal::History),
    ("primary_conninfo", Refusal::History),
    ("primary_slot_name", Refusal::History),
    ("wal_receiver_create_temp_slot", Refusal::History),
    ("recovery_min_apply_delay", Refusal::History),
    ("recovery_init_sync_method", Refusal::History),
    ("max_wal_senders", Refusal::History),
    ("max_replication_slots", Refusal::History),
    ("synchronous_standby_names", Refusal::History),
    ("synchronized_standby_slots", Refusal::History),
    ("sync_replication_slots", Refusal::History),
    ("summarize_wal", Refusal::History),
    // Checks that keep data correct or private.
    ("allow_system_table_mods", Refusal::Safety),
    ("allow_in_place_tablespaces", Refusal::Safety),
    ("allow_alter_system", Refusal::Safety),
    ("ignore_checksum_failure", Refusal::Safety),
    ("ignore_invalid_pages", Refusal::Safety),
    ("ignore_system_indexes", Refusal::Safety),
    ("zero_damaged_pages", Refusal::Safety),
    ("lo_compat_privileges", Refusal::Safety),
    ("password_encryption", Refusal::Safety),
    ("db_user_namespace", Refusal::Safety),
    ("pre_auth_delay", Refusal::Safety),
    ("post_auth_delay", Refusal::Safety),
    // Connections.
    ("port", Refusal::Managed),
    ("listen_addresses", Refusal::Managed),
    ("bonjour", Refusal::Managed),
    ("bonjour_name", Refusal::Managed),
];

/// Refused by prefix: whole families, including members later Postgres majors add.
pub const REFUSED_PREFIXES: &[(&str, Refusal)] = &[
    ("ssl", Refusal::Managed),
    ("recovery_target", Refusal::History),
    ("syslog_", Refusal::NamesFile),
    ("krb_", Refusal::NamesFile),
];

/// Why `name` may not be set, or `None` when it may.
pub fn refusal(name: &str) -> Option<Refusal> {
    REFUSED
        .iter()
        .find(|(n, _)| *n == name)
        .or_else(|| REFUSED_PREFIXES.iter().find(|(p, _)| name.starts_with(p)))
        .map(|(_, r)| *r)
}

/// The message for a refused parameter: names it and says why.
pub fn refusal_message(name: &str, why: Refusal) -> String {
    format!(
        "Postgres parameter `{name}` cannot be set: {}",
        why.reason()
    )
}

/// The CEL expression (over the `postgresParameters` map, as `self`) that holds when no
/// key is refused; the API server evaluates it on every apply.
pub fn cel_rule() -> String {
    format!("self.all(k, !({}))", cel_refused("k"))
}

/// The API server's message when [`cel_rule`] fails. (A message expression naming the
/// keys would exceed the API server's cost budget for a map of unbounded strings; the
/// operator's `InvalidSpec` condition names them for a spec that got past an older CRD.)
pub const CEL_MESSAGE: &str = "postgresParameters sets a parameter that runs a program, loads \
     code, names a server file, changes recovery, replication or archiving, or is managed by \
     Ramify (e.g. restore_command, shared_preload_libraries, ssl_*, recovery_target_*); see \
     docs/kubernetes.md, Postgres parameters";

/// A CEL expression that holds when the parameter named `var` is refused.
fn cel_refused(var: &str) -> String {
    let names: Vec<String> = REFUSED.iter().map(|(n, _)| format!("'{n}'")).collect();
    let mut out = format!("{var} in [{}]", names.join(", "));
    for (p, _) in REFUSED_PREFIXES {
        out.push_str(&format!(" || {var}.startsWith('{p}')"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One case per parameter the issue names as running a program or loading code.
    #[test]
    fn refuses_programs_and_code() {
        for (name, why) in [
            ("restore_command", Refusal::RunsProgram),
            ("recovery_end_command", Refusal::RunsProgram),
            ("archive_cleanup_command", Refusal::RunsProgram),
            ("archive_command", Refusal::RunsProgram),
            ("ssl_passphrase_command", Refusal::RunsProgram),
            ("shared_preload_libraries", Refusal::LoadsCode),
            ("local_preload_libraries", Refusal::LoadsCode),
            ("session_preload_libraries", Refusal::LoadsCode),
            ("dynamic_library_path", Refusal::LoadsCode),
            ("jit_provider", Refusal::LoadsCode),
            ("archive_library", Refusal::LoadsCode),
        ] {
            assert_eq!(refusal(name), Some(why), "{name}");
        }
    }

    #[test]
    fn refuses_every_listed_name_and_prefix_family() {
        for (name, why) in REFUSED {
            assert_eq!(refusal(name), Some(*why), "{name}");
            let msg = refusal_message(name, *why);
            assert!(msg.contains(&format!("`{name}`")), "{msg}");
        }
        for name in [
            "ssl",
            "ssl_cert_file",
            "ssl_key_file",
            "ssl_ca_file",
            "ssl_crl_dir",
            "ssl_min_protocol_version",
            "recovery_target",
            "recovery_target_lsn",
            "recovery_target_time",
            "recovery_target_action",
            "recovery_target_timeline",
            "syslog_facility",
            "krb_caseins_users",
        ] {
            assert!(refusal(name).is_some(), "{name} accepted");
        }
    }

    /// CloudNativePG's fixed and blocked parameters (pkg/postgres/configuration.go) are
    /// all refused here too, as the issue asks: the list is at least as complete.
    #[test]
    fn covers_cloudnativepg_fixed_parameters() {
        for name in [
            "allow_system_table_mods",
            "archive_mode",
            "bonjour",
            "bonjour_name",
            "config_file",
            "data_directory",
            "data_sync_retry",
            "event_source",
            "external_pid_file",
            "hba_file",
            "hot_standby",
            "ident_file",
            "jit_provider",
            "listen_addresses",
            "logging_collector",
            "port",
            "primary_conninfo",
            "primary_slot_name",
            "recovery_target",
            "recovery_target_action",
            "recovery_target_inclusive",
            "recovery_target_lsn",
            "recovery_target_name",
            "recovery_target_time",
            "recovery_target_timeline",
            "recovery_target_xid",
            "restore_command",
            "shared_preload_libraries",
            "unix_socket_directories",
            "unix_socket_group",
            "unix_socket_permissions",
            "wal_level",
            "wal_log_hints",
            "archive_cleanup_command",
            "archive_command",
            "full_page_writes",
            "log_destination",
            "log_directory",
            "log_file_mode",
            "log_filename",
            "log_rotation_age",
            "log_rotation_size",
            "log_truncate_on_rotation",
            "promote_trigger_file",
            "recovery_end_command",
            "recovery_min_apply_delay",
            "restart_after_crash",
            "ssl",
            "ssl_ca_file",
            "ssl_cert_file",
            "ssl_ciphers",
            "ssl_crl_file",
            "ssl_dh_params_file",
            "ssl_ecdh_curve",
            "ssl_key_file",
            "ssl_max_protocol_version",
            "ssl_min_protocol_version",
            "ssl_passphrase_command",
            "ssl_passphrase_command_supports_reload",
            "ssl_prefer_server_ciphers",
            "stats_temp_directory",
            "synchronous_standby_names",
            "syslog_facility",
            "syslog_ident",
            "syslog_sequence_numbers",
            "syslog_split_messages",
        ] {
            assert!(refusal(name).is_some(), "{name} accepted");
        }
    }

    /// One accepted parameter of each kind users set.
    #[test]
    fn accepts_what_users_tune() {
        for name in [
            "work_mem",
            "shared_buffers",
            "log_min_duration_statement",
            "log_statement",
            "statement_timeout",
            "random_page_cost",
            "autovacuum_naptime",
            "max_connections",
            "timezone",
            "auto_explain.log_min_duration",
            "pg_stat_statements.max",
            "synchronous_commit",
            "log_line_prefix",
        ] {
            assert_eq!(refusal(name), None, "{name} refused");
        }
    }

    #[test]
    fn cel_rule_names_every_refusal() {
        let rule = cel_rule();
        assert!(rule.starts_with("self.all(k, !(k in ['archive_command', "));
        for (name, _) in REFUSED {
            assert!(rule.contains(&format!("'{name}'")), "{name}");
        }
        for (prefix, _) in REFUSED_PREFIXES {
            assert!(
                rule.contains(&format!("k.startsWith('{prefix}')")),
                "{prefix}"
            );
        }
        assert!(CEL_MESSAGE.contains("restore_command, shared_preload_libraries"));
    }
}
