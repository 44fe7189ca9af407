//! The command line: every command, flag and help text of `ramify`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use ramify_lifecycle::HistoryPoint;

use crate::value_parsers::{
    parse_branch_ref, parse_duration, parse_image_size, parse_point, parse_suspend_after,
    parse_time,
};

/// Copy-on-write Postgres branches, on your own machine or on a Kubernetes cluster.
///
/// Ramify runs stock Postgres and branches it one layer below, in a reflink filesystem
/// (XFS or btrfs): a branch is a full, isolated Postgres forked from its parent at a
/// moment you choose, created in well under a second whatever the size, and costing
/// storage only for what it changes.
///
/// Start local mode, create a root branch, fork it and connect:
///
///     ramify local up
///     ramify branch create main
///     ramify branch create dev --parent main
///     psql "$(ramify branch connect dev)"
///
/// Local mode or a Kubernetes cluster: the same commands drive either. Run as `ramify`,
/// they drive local mode unless --kube, --context or --kubeconfig is given; installed
/// (or symlinked) as `kubectl-ramify`, i.e. run as `kubectl ramify`, they always drive
/// the cluster of the current kubeconfig context. -n and -A only mean something for a
/// cluster, so `ramify -n NS` without --kube is refused rather than ignored.
///
///     kubectl ramify branch create dev --parent main -n team-a --wait
///     kubectl ramify branch list -A
///     ramify --context prod-eu branch list -n team-a
#[derive(Debug, Parser)]
#[command(
    name = "ramify",
    version,
    propagate_version = true,
    verbatim_doc_comment
)]
pub struct Cli {
    /// Output format of every command.
    #[arg(short, long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Local mode's data directory: storage, branch state and the daemon's files.
    ///
    /// Default: ~/.local/share/ramify (or $XDG_DATA_HOME/ramify) for a normal user, and
    /// /var/lib/ramify when running as root — local mode runs Postgres as the unprivileged
    /// `postgres` user, which cannot enter /root.
    #[arg(long, global = true, env = "RAMIFY_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags that pick and address a Kubernetes cluster (kubectl's own names).
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Kubernetes")]
pub struct KubeArgs {
    /// Drive the cluster of the current kubeconfig context instead of local mode
    /// (implied by --context and --kubeconfig, and when run as `kubectl ramify`).
    #[arg(long, global = true)]
    pub kube: bool,

    /// The kubeconfig file (default: $KUBECONFIG, then ~/.kube/config). Implies --kube.
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (default: its current context). Implies --kube.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// The namespace of the branches (default: the context's namespace, else `default`).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,

    /// List branches of every namespace, as one tree (branch list, checkpoint list).
    #[arg(short = 'A', long, global = true, conflicts_with = "namespace")]
    pub all_namespaces: bool,

    /// Namespace Ramify (operator, storage nodes, proxy) is installed in; port-forwards go
    /// to its proxy Pods there.
    #[arg(
        long,
        global = true,
        env = "RAMIFY_NAMESPACE",
        value_name = "NAMESPACE",
        default_value = "ramify-system"
    )]
    pub storage_namespace: String,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text for people.
    Table,
    /// Aligned text with more columns (`branch list`: where each branch's restorable
    /// history starts); elsewhere the same as `table`.
    Wide,
    /// JSON: local mode's own field names; on a cluster, the Kubernetes objects.
    Json,
    /// YAML: local mode's own field names; on a cluster, the Kubernetes objects.
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start, stop and inspect local mode (one daemon per data directory).
    ///
    /// Local mode runs the storage node, the wake-on-connect proxy and every branch's
    /// Postgres on this machine, supervised by one background daemon.
    ///
    /// Example: ramify local up && ramify local status
    #[command(subcommand)]
    Local(LocalCommand),

    /// Create, list, inspect, connect to, wake, suspend and delete branches.
    ///
    /// A branch is a full Postgres with its own port, role and password. A root branch
    /// starts empty; a fork starts from its parent's state now, at an LSN, at a time or
    /// at one of the parent's snapshots.
    ///
    /// Example: ramify branch create dev --parent main --at -10m
    #[command(subcommand)]
    Branch(BranchCommand),

    /// Run psql connected to a branch.
    ///
    /// Wakes the branch if it is suspended (connecting through the proxy does that) and
    /// runs `psql`; its exit code is psql's. Arguments after `--` go to psql. The password
    /// travels in PGPASSWORD, not on the command line. On a cluster, psql connects
    /// through a port-forward to a proxy Pod (it needs `get` and `create` on `pods/portforward` in
    /// the storage namespace: the chart's Role ramify-connect), closed when psql exits.
    ///
    /// Example: ramify psql dev -- -c 'select count(*) from orders'
    ///
    /// Example: kubectl ramify psql dev -n team-a -- -c 'select 1'
    Psql {
        /// Branch to connect to.
        name: String,
        /// Extra arguments for psql.
        #[arg(last = true, value_name = "ARGS")]
        args: Vec<String>,
    },

    /// Checkpoints: named points of a branch's history to revert to.
    ///
    /// A checkpoint is a Postgres restore point whose position and time are recorded with
    /// the branch, written in a few milliseconds without stopping its Postgres. Revert
    /// with `ramify branch restore BRANCH --at checkpoint:NAME`; the state before the
    /// revert is kept as a backup branch, so the checkpoints after the one reverted to
    /// stay usable and you can switch between them.
    ///
    /// Example: ramify checkpoint create agent-7 step-3
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),

    /// Run a command against a throwaway branch, then delete it.
    ///
    /// Creates a branch from --from (at --at, default its latest state), runs the command
    /// with DATABASE_URL and PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE set to it,
    /// deletes the branch whatever happens (success, failure, Ctrl-C, the command killed)
    /// and exits with the command's status (128+N when it died of signal N). Parallel
    /// runs each get their own branch.
    ///
    /// Example: ramify run --from main --name-prefix ci -- cargo test
    Run(RunArgs),

    /// Show how two branches differ: schema (as normalised DDL), and rows with --data.
    ///
    /// The first branch is the "before" side (`-` lines) and the second the "after" side
    /// (`+` lines), like `git diff BEFORE AFTER`. With one branch, its parent is the
    /// "before" side, so the branch's own changes show as `+`. Either branch may name a
    /// point of its history as BRANCH@WHEN (WHEN as in `branch create --at`: an LSN, a
    /// time as psql prints it or in RFC 3339, -10m, snapshot:NAME, checkpoint:NAME); that
    /// side is read from a
    /// throwaway branch forked there, deleted afterwards.
    ///
    /// Output: a unified diff grouped by object, then with --data one line per differing
    /// table (by primary key: rows only in each side and changed rows; row counts for a
    /// table without one). Empty when identical. -o json prints
    /// {a, b, identical, summary, schema, data}.
    ///
    /// Exit status: 0, or with --exit-code 1 when the branches differ; 2 on errors.
    ///
    /// Example: ramify diff dev
    ///
    /// Example: ramify diff main dev --data --exit-code
    ///
    /// Example: ramify diff agent@checkpoint:step-3 agent
    Diff(DiffArgs),

    /// Take, list and delete named snapshots of a branch.
    ///
    /// A snapshot is a consistent copy-on-write image of the branch kept until deleted;
    /// fork from it later with `ramify branch create NEW --parent BRANCH --at snapshot:NAME`.
    ///
    /// Example: ramify snapshot create main before-migration
    #[command(subcommand)]
    Snapshot(SnapshotCommand),

    /// How the branches kept in the backup repository stand (local mode).
    ///
    /// With `ramify local up --backup s3://BUCKET/PREFIX`, roots and forks created with
    /// --backup are kept in S3-compatible object storage and survive the loss of the data
    /// directory (`ramify local up --recover`). On a cluster, see each branch's condition
    /// BackupHealthy (`kubectl ramify branch get`).
    ///
    /// Example: ramify backup status
    #[command(subcommand)]
    Backup(BackupCommand),

    /// Show whether Ramify is healthy, and what is not and why.
    ///
    /// Local mode: the same as `ramify local status`. On a cluster: the operator, each
    /// storage node (clone method, used and total space, read through the API server's
    /// Pod proxy), the proxy, and the branches that are not Ready, with their reasons.
    ///
    /// Example: kubectl ramify status
    Status,

    /// Show Ramify end to end in about a minute, on a data directory of its own.
    ///
    /// Starts local mode in <DATA_DIR>-demo (on a scratch XFS image when run as root),
    /// creates `main` with pgbench data, branches `dev` from it and times that, changes
    /// dev and shows main unchanged, shows how few bytes dev owns, time-travels dev to
    /// before the change, lets dev suspend and wakes it with a query, then cleans
    /// everything up. Your own branches are never touched.
    ///
    /// Example: ramify demo --keep
    Demo {
        /// Leave the demo's local mode and branches running afterwards.
        #[arg(long)]
        keep: bool,
    },

    /// Print a shell completion script.
    ///
    /// Example (bash): source <(ramify completion bash)
    ///
    /// Example (zsh):  ramify completion zsh > "${fpath[1]}/_ramify"
    ///
    /// Example (fish): ramify completion fish > ~/.config/fish/completions/ramify.fish
    Completion {
        /// The shell to write completions for.
        shell: CompletionShell,
    },
}

/// Shells `ramify completion` supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Subcommand)]
pub enum LocalCommand {
    /// Start local mode in the background for the data directory.
    ///
    /// Checks that Postgres is installed, prepares the data directory (as root: hands it
    /// to the Postgres user, since Postgres refuses to run as root), starts the daemon
    /// detached with its log in <DATA_DIR>/local/daemon.log, waits until it answers and
    /// prints where it runs and how it clones. Forks are copy-on-write only on XFS
    /// (reflink=1) or btrfs; elsewhere every fork is a full copy and this says so.
    ///
    /// Example: sudo ramify local up --xfs-image 8G
    ///
    /// With a backup repository (durable branches survive losing the data directory):
    ///   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… ramify local up --backup s3://bucket/ramify
    /// and after losing it:  ramify local up --backup s3://bucket/ramify --recover
    Up(Box<UpArgs>),

    /// Stop local mode: every branch's Postgres, the proxy and the storage node.
    ///
    /// Waits until the daemon has exited, then unmounts the XFS image `local up
    /// --xfs-image` mounted. Branches and their data stay; `ramify local up` brings them
    /// back.
    ///
    /// Example: ramify local down
    Down,

    /// Show whether local mode runs, and its storage: filesystem, clone method, space.
    ///
    /// Example: ramify local status -o json
    Status,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Run the daemon in this process instead of in the background (Ctrl-C stops it).
    #[arg(long)]
    pub foreground: bool,

    /// Put the data directory on a sparse XFS image of this size with reflinks, created
    /// (mkfs.xfs -m reflink=1) at <DATA_DIR>.xfs.img if missing and loop-mounted on the
    /// data directory; `local down` unmounts it. Root only. Sizes like 8G, 512M, 1T.
    #[arg(long, value_name = "SIZE", value_parser = parse_image_size)]
    pub xfs_image: Option<u64>,

    /// Directory holding postgres, initdb and pg_ctl (default: $PATH, then
    /// /usr/lib/postgresql/<newest>/bin).
    #[arg(long, value_name = "DIR")]
    pub pg_bin: Option<PathBuf>,

    /// OS user Postgres and the daemon run as when started as root (default: postgres).
    #[arg(long, value_name = "USER")]
    pub pg_user: Option<String>,

    /// Refuse plaintext connections to branches: clients must use TLS (sslmode=require,
    /// or verify-full with sslrootcert=<DATA_DIR>/tls/ca.crt as `branch connect` prints).
    /// Without it TLS is offered and plaintext still accepted.
    #[arg(long)]
    pub tls_required: bool,

    /// Keep durable branches (roots, and forks created with --backup) in S3-compatible
    /// object storage through pgBackRest, so they survive losing this data directory.
    /// The repository is remembered in <DATA_DIR>/local/backup.json for later starts.
    #[command(flatten)]
    pub backup: ramify_storage::backup::RepoArgs,

    /// Rebuild a lost data directory from the backup repository before serving: every
    /// durable branch comes back with its name, port and password (the others do not).
    /// The data directory must have no branches.
    #[arg(long)]
    pub recover: bool,

    /// Set by `local up` on the background daemon it starts: the data directory is
    /// already prepared and output already goes to the log.
    #[arg(long, hide = true, requires = "foreground")]
    pub detached: bool,
}

#[derive(Debug, Subcommand)]
pub enum BranchCommand {
    /// Create a branch: an empty root, or a fork of --parent.
    ///
    /// --at picks the moment of the parent's history: `latest` (default), an LSN like
    /// 0/16B3748, a time with a zone as psql prints `SELECT now()` (quoted:
    /// '2026-12-04 14:45:02.954757+00') or in RFC 3339 (2026-12-04T14:45:02Z), a time
    /// relative to now like
    /// -1h, -10m or -90s, or a snapshot of the parent as snapshot:NAME. A time forks after
    /// the last transaction committed at or before it.
    ///
    /// On a cluster this writes a DatabaseBranch; --wait waits until it is Ready, printing
    /// its conditions as they change (local mode's create returns once it is ready).
    ///
    /// Example: ramify branch create before-deploy --parent main --at -15m
    ///
    /// Example: kubectl ramify branch create dev --parent main -n team-a --wait
    Create(CreateArgs),

    /// List branches as a tree: each fork under its parent.
    ///
    /// With -o json or -o yaml, prints the flat list with every field (on a cluster: the
    /// DatabaseBranch objects, like kubectl). On a cluster STATE is the compute's state
    /// once the branch is Ready, else its phase; PORT is its proxy port; -A lists every
    /// namespace as one tree (forks across namespaces under their parent).
    ///
    /// Example: ramify branch list
    ///
    /// Example: kubectl ramify branch list -A
    List,

    /// Show one branch: connection, fork point, space and snapshots.
    ///
    /// -o json carries every field (fork_lsn, fork_time, logical_bytes, exclusive_bytes,
    /// history_bytes, snapshots, …).
    ///
    /// Example: ramify branch get dev -o json
    Get {
        /// The branch.
        name: String,
    },

    /// Delete a branch, its Postgres and its storage.
    ///
    /// A branch with children is kept unless --force, which deletes the children first.
    /// On a cluster the deletion is done by the operator; --wait waits until the branch is
    /// gone (local mode's delete returns when it is).
    ///
    /// Example: ramify branch delete dev --force
    ///
    /// Example: kubectl ramify branch delete pr-42 -n previews --wait
    Delete {
        /// The branch.
        name: String,
        /// Also delete every branch forked from it.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },

    /// Print a branch's connection URI, and nothing else.
    ///
    /// Connecting through it wakes a suspended branch. On a cluster the URI (from the
    /// branch's Secret) names the branch's Service, reachable inside the cluster;
    /// --port-forward instead opens a local port to the branch through the API server
    /// (a port-forward to a proxy Pod), prints a 127.0.0.1 URI and forwards until Ctrl-C.
    /// Local mode's URI is on this machine already, so --port-forward just prints it.
    ///
    /// Example: psql "$(ramify branch connect dev)"
    ///
    /// Example: kubectl ramify branch connect dev -n team-a --port-forward --local-port 5433
    Connect {
        /// The branch.
        name: String,
        /// Forward a local port to the branch and print a URI on 127.0.0.1.
        #[arg(long)]
        port_forward: bool,
        /// The local port of --port-forward (default: a free one).
        #[arg(
            long,
            value_name = "PORT",
            requires = "port_forward",
            default_value_t = 0
        )]
        local_port: u16,
    },

    /// Start a branch's Postgres now rather than on the first connection.
    ///
    /// On a cluster this asks the operator (annotation ramify.dev/wake-request) and waits
    /// until it is done.
    ///
    /// Example: ramify branch wake dev
    Wake {
        /// The branch.
        name: String,
        /// How long to wait for the operator (cluster only): 90s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
        timeout: u64,
    },

    /// Stop a branch's Postgres now; the next connection starts it again.
    ///
    /// On a cluster this asks the operator (annotation ramify.dev/suspend-request) and
    /// waits until it is done.
    ///
    /// Example: ramify branch suspend dev
    Suspend {
        /// The branch.
        name: String,
        /// How long to wait for the operator (cluster only): 90s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = parse_duration)]
        timeout: u64,
    },

    /// Make a branch its parent's latest state again.
    ///
    /// Same connection string, port and password; open sessions are ended (Postgres's
    /// "terminating connection due to …" error) and new ones see the parent's data.
    /// What the branch had is deleted; its child branches keep working.
    ///
    /// On a cluster this creates a BranchRestore (source parent: true) and waits until it
    /// has Succeeded or Failed.
    ///
    /// Example: ramify branch reset dev
    Reset {
        /// The branch.
        name: String,
        /// How long to wait for a cluster's operator: 90s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: u64,
    },

    /// Make a branch what it (or --from) was at a point of history.
    ///
    /// Same connection string, port and password; open sessions are ended. The state
    /// before is kept as a suspended backup branch NAME-before-restore-<UTC time> that
    /// expires after the restore window (--no-backup: not kept). A point outside the
    /// restore window is refused and nothing changes.
    ///
    /// On a cluster this creates a BranchRestore and waits until it has Succeeded or
    /// Failed.
    ///
    /// Example: ramify branch restore main --at -10m
    ///
    /// Example: ramify branch restore agent-7 --at checkpoint:step-3
    Restore(RestoreArgs),

    /// Protect a branch: delete, reset, restore and expiry are refused until unprotected.
    ///
    /// Protecting a branch clears its expiry.
    ///
    /// Example: ramify branch protect main
    Protect {
        /// The branch.
        name: String,
    },

    /// Lift a branch's protection.
    ///
    /// Example: ramify branch unprotect main
    Unprotect {
        /// The branch.
        name: String,
    },

    /// Set or clear when a branch is deleted by itself.
    ///
    /// Local mode deletes an expired branch (compute, port and storage) within about a
    /// second; one with child branches is kept until they are gone.
    ///
    /// Example: ramify branch expire pr-42 --in 7d
    Expire(ExpireArgs),

    /// Move a branch to another storage node of a cluster, with every commit.
    ///
    /// Sets the DatabaseBranch's spec.storageNode: the operator stops its compute
    /// (sessions end; connections meanwhile are refused as "moving"), its node seals it —
    /// every WAL record into the backup repository — the new node copies it through the
    /// last record, and the branch carries on there under the same name, Secret, Service
    /// and password; the old node's copy is deleted. Only a branch kept in the backup
    /// repository moves (a root, or one created with --backup); its forks stay where they
    /// are. Waits until it is there unless --no-wait. Local mode has one storage node.
    ///
    /// Example: kubectl ramify branch move main --storage-node ramify-storage-1
    Move(MoveArgs),
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// The branch.
    pub name: String,

    /// The storage node to move it to (a Pod of the storage StatefulSet, like
    /// ramify-storage-1).
    #[arg(long, value_name = "NODE")]
    pub storage_node: String,

    /// Return once the move is asked for, without waiting for it.
    #[arg(long)]
    pub no_wait: bool,

    /// How long to wait for the move: 90s, 10m (it copies the branch's base backup and
    /// WAL through the bucket, so it grows with the branch's size).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The branch to restore.
    pub name: String,

    /// The point: a time with a zone as psql prints it ('2026-12-04 14:45:02.954757+00')
    /// or in RFC 3339 (2026-12-04T14:45:02Z), -10m / -1h (that long ago), an LSN (0/16B3748),
    /// snapshot:NAME or checkpoint:NAME. Required unless --from is given (then default
    /// latest).
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true, value_parser = parse_point)]
    pub at: Option<HistoryPoint>,

    /// Take this branch's history instead of the branch's own.
    #[arg(long, value_name = "BRANCH")]
    pub from: Option<String>,

    /// Do not keep the state before the restore as a backup branch.
    #[arg(long)]
    pub no_backup: bool,

    /// How long to wait for a cluster's operator: 90s, 5m.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("when").required(true).args(["in_", "at", "never"])))]
pub struct ExpireArgs {
    /// The branch.
    pub name: String,

    /// Delete it this long from now: 90s, 30m, 2h, 7d.
    #[arg(long = "in", value_name = "DURATION", value_parser = parse_duration)]
    pub in_: Option<u64>,

    /// Delete it at this time (with a zone, as psql prints it or in RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<DateTime<Utc>>,

    /// Never delete it by itself.
    #[arg(long)]
    pub never: bool,
}

#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Record a checkpoint of a branch now (waking it if suspended).
    ///
    /// Without NAME the checkpoint is called cp-N, N one more than the highest so far.
    ///
    /// On a cluster this creates a BranchCheckpoint (its name is the checkpoint's, unique
    /// in the namespace; cp-N counts over the namespace) and waits until it is Ready.
    ///
    /// Example: ramify checkpoint create agent-7 step-3
    Create {
        /// The branch.
        branch: String,
        /// Name of the checkpoint (1–63 of a-z 0-9 - _ .).
        name: Option<String>,
        /// How long to wait for a cluster's operator: 90s, 5m.
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
        timeout: u64,
    },

    /// List a branch's checkpoints, oldest first, and which branch holds each one's
    /// history (the branch itself, or a backup branch after a revert).
    ///
    /// Example: ramify checkpoint list agent-7
    List {
        /// The branch.
        branch: String,
    },

    /// Forget a checkpoint.
    ///
    /// Example: ramify checkpoint delete agent-7 step-3
    Delete {
        /// The branch.
        branch: String,
        /// The checkpoint.
        name: String,
    },
}

/// A branch, optionally at a point of its history: `NAME` or `NAME@WHEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchRef {
    pub name: String,
    pub at: Option<HistoryPoint>,
    /// As typed, for labels.
    pub label: String,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The "before" side (`-`): a branch, or BRANCH@WHEN. Alone, the "after" side, compared
    /// with its parent.
    #[arg(value_name = "A", value_parser = parse_branch_ref)]
    pub a: BranchRef,

    /// The "after" side (`+`): a branch, or BRANCH@WHEN.
    #[arg(value_name = "B", value_parser = parse_branch_ref)]
    pub b: Option<BranchRef>,

    /// Also compare rows of the tables both sides have.
    #[arg(long)]
    pub data: bool,

    /// Exit with 1 when the branches differ, 0 when identical.
    #[arg(long)]
    pub exit_code: bool,

    /// Unchanged lines shown around each change (like `git diff -U`; the long form is not
    /// --context, which names a kubeconfig context).
    #[arg(
        short = 'U',
        long = "unified",
        value_name = "LINES",
        default_value_t = 3
    )]
    pub unified: usize,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Branch to fork the run's branch from.
    #[arg(long, value_name = "BRANCH")]
    pub from: String,

    /// Point of --from's history (same forms as `branch create --at`, checkpoint:NAME
    /// too); a fixed LSN makes every run start from the same data.
    #[arg(long, value_name = "WHEN", allow_hyphen_values = true, value_parser = parse_point)]
    pub at: Option<HistoryPoint>,

    /// Prefix of the branch's name, which gets a random suffix (ci-3f9k2m7q).
    #[arg(long, value_name = "PREFIX", default_value = "run")]
    pub name_prefix: String,

    /// Safety net for when `ramify` itself is killed (kill -9) and cannot delete the
    /// branch: local mode deletes it after this long anyway.
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub expires_in: u64,

    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name of the new branch (lower-case letters, digits and '-').
    pub name: String,

    /// Branch to fork from; without it the new branch is an empty root. On a cluster,
    /// NAMESPACE/NAME forks a branch of another namespace (its spec.sharing must allow it).
    #[arg(long, value_name = "BRANCH")]
    pub parent: Option<String>,

    /// Moment of the parent's history: latest, an LSN (0/16B3748), a time with a zone as
    /// psql prints it ('2026-12-04 14:45:02.954757+00') or in RFC 3339,
    /// -1h / -10m / -90s (that long ago), snapshot:NAME, or checkpoint:NAME. Only with
    /// --parent.
    #[arg(
        long,
        value_name = "WHEN",
        requires = "parent",
        allow_hyphen_values = true,
        value_parser = parse_point
    )]
    pub at: Option<HistoryPoint>,

    /// Idle time before the branch's Postgres is suspended: 5m, 1h, 90s; 0 or never
    /// to keep it running (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_suspend_after)]
    pub suspend_after: Option<u64>,

    /// Delete the branch by itself this long after creation: 90s, 30m, 2h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with_all = ["expires_at", "protected"])]
    pub expires_in: Option<u64>,

    /// Delete the branch by itself at this time (with a zone, as psql prints it or in
    /// RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "protected")]
    pub expires_at: Option<DateTime<Utc>>,

    /// Create it protected: delete, reset, restore and expiry are refused.
    #[arg(long)]
    pub protected: bool,

    /// Keep the branch in the backup repository (local mode started with `local up
    /// --backup`; on a cluster, the chart's storage.backup), so it survives losing the
    /// data directory or the storage node's volume. Roots are kept by default; a fork is
    /// kept only with this flag (and then stores only its own WAL); on a cluster, also a
    /// branch created --protected. Kept branches stay kept through reset and restore.
    #[arg(long)]
    pub backup: bool,

    /// On a cluster: the storage node the branch lives on (ramify-storage-1). A root is
    /// placed there; a fork of a parent on another node is copied through the backup
    /// repository, as of the parent's last archived WAL (the parent must be kept; not
    /// with --at). Local mode has one storage node.
    #[arg(long, value_name = "NODE")]
    pub storage_node: Option<String>,

    /// Make a root that follows this Postgres instead of an empty one: a URI such as
    /// postgresql://replicator@db.example:5432/postgres naming a role with REPLICATION.
    /// The password comes from the URI, --password-file, or PGPASSFILE/~/.pgpass; it is
    /// never echoed. Local mode keeps it only in the storage node's run directory; on a
    /// cluster it goes into the Secret NAME-source (key uri), which the DatabaseBranch's
    /// spec.source.external names and which is deleted with the branch; the cluster's
    /// chart must list the source's host (following.allowedHosts). Fork the follower to get writable
    /// branches of production. Physical (the default) copies the whole cluster and
    /// streams its WAL as a hot standby: same Postgres major. Logical (--mode logical
    /// --publication P) copies the schema and subscribes: for managed services and other
    /// majors; DDL and sequences are not replicated.
    #[arg(long, value_name = "URI", conflicts_with_all = ["parent", "suspend_after", "expires_in", "expires_at"])]
    pub follow: Option<String>,

    /// With --follow: a replication slot on the source, so it keeps the WAL the
    /// follower has not received yet — also while it is down. Physical: made when
    /// missing. Logical: always made by the subscription (default ramify_<timeline>).
    #[arg(long, value_name = "NAME", requires = "follow")]
    pub slot: Option<String>,

    /// With --follow: physical (a hot standby of the whole cluster) or logical (a
    /// subscription to --publication).
    #[arg(
        long,
        value_name = "MODE",
        requires = "follow",
        default_value = "physical"
    )]
    pub mode: ramify_api::FollowMode,

    /// With --mode logical: the source's publication to subscribe to (CREATE
    /// PUBLICATION NAME FOR ALL TABLES on the source).
    #[arg(
        long,
        value_name = "NAME",
        requires = "follow",
        required_if_eq("mode", "logical")
    )]
    pub publication: Option<String>,

    /// With --follow: a file whose first line is the source's password.
    #[arg(long, value_name = "FILE", requires = "follow")]
    pub password_file: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// `--wait` and `--timeout` of the verbs a cluster's operator completes later.
#[derive(Debug, Clone, Copy, Args)]
pub struct WaitArgs {
    /// On a cluster, wait until the operator is done (local mode always is on return).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits: 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, requires = "wait")]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Every branch: kept or not, archiving healthy or failing (and why), the newest WAL
    /// in the bucket and how long ago, what waits on this machine, the newest base backup.
    ///
    /// Example: ramify backup status -o json
    Status,

    /// The base backups in the repository, of every kept branch or of one. A fork kept
    /// without a backup of its own comes back from its parent's and its own WAL.
    ///
    /// Example: ramify backup list main
    List {
        /// Only this branch.
        branch: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a named snapshot of a branch now.
    ///
    /// Example: ramify snapshot create main before-migration
    Create {
        /// The branch.
        branch: String,
        /// Name of the snapshot (1–63 of a-z 0-9 - _ .).
        name: String,
    },

    /// List a branch's snapshots: fork point, periodic and named ones.
    ///
    /// Example: ramify snapshot list main
    List {
        /// The branch.
        branch: String,
    },

    /// Delete a named snapshot of a branch.
    ///
    /// Example: ramify snapshot delete main before-migration
    Delete {
        /// The branch.
        branch: String,
        /// The snapshot.
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    use ramify_api::At;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("ramify").chain(args.iter().copied()))
    }

    fn create_args(args: &[&str]) -> CreateArgs {
        match parse(args).unwrap().command {
            Command::Branch(BranchCommand::Create(c)) => c,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn relative_at_is_not_taken_for_a_flag() {
        let c = create_args(&["branch", "create", "dev", "--parent", "main", "--at", "-1h"]);
        assert!(matches!(c.at, Some(HistoryPoint::At(At::Time(_)))));
        let c = create_args(&["branch", "create", "dev", "--parent", "main", "--at=-10m"]);
        assert!(matches!(c.at, Some(HistoryPoint::At(At::Time(_)))));
    }

    #[test]
    fn at_forms_parse() {
        let c = create_args(&[
            "branch",
            "create",
            "dev",
            "--parent",
            "main",
            "--at",
            "0/16B3748",
        ]);
        assert_eq!(c.at, Some(At::Lsn(ramify_api::Lsn(0x16B3748)).into()));
        let c = create_args(&[
            "branch", "create", "dev", "--parent", "main", "--at", "latest",
        ]);
        assert_eq!(c.at, Some(At::Latest.into()));
        let c = create_args(&[
            "branch",
            "create",
            "dev",
            "--parent",
            "main",
            "--at",
            "checkpoint:step-3",
        ]);
        assert_eq!(c.at, Some(HistoryPoint::Checkpoint("step-3".into())));
        let c = create_args(&["branch", "create", "dev", "--parent", "main"]);
        assert_eq!(c.at, None);
        assert_eq!(c.parent.as_deref(), Some("main"));
    }

    #[test]
    fn at_without_parent_is_a_usage_error() {
        let err = parse(&["branch", "create", "dev", "--at", "latest"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("--parent"), "{err}");
    }

    #[test]
    fn garbage_at_is_a_clear_usage_error() {
        let err = parse(&[
            "branch",
            "create",
            "dev",
            "--parent",
            "m",
            "--at",
            "yesterday",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert_eq!(err.exit_code(), 2);
        let msg = err.to_string();
        assert!(msg.contains("yesterday"), "{msg}");
        assert!(msg.contains("0/16B3748"), "{msg}");
    }

    #[test]
    fn suspend_after_forms_parse() {
        let c = create_args(&["branch", "create", "dev", "--suspend-after", "5m"]);
        assert_eq!(c.suspend_after, Some(300));
        let c = create_args(&["branch", "create", "dev", "--suspend-after", "0"]);
        assert_eq!(c.suspend_after, Some(0));
        let err = parse(&["branch", "create", "dev", "--suspend-after", "soon"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["branch", "list", "-o", "json", "--data-dir", "/tmp/r"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
        assert_eq!(cli.data_dir, Some(PathBuf::from("/tmp/r")));
        let cli = parse(&["-o", "yaml", "local", "status"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Yaml);
        let err = parse(&["-o", "xml", "local", "status"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn psql_passes_arguments_after_the_separator() {
        let cli = parse(&["psql", "dev", "--", "-c", "select 1", "-X"]).unwrap();
        match cli.command {
            Command::Psql { name, args } => {
                assert_eq!(name, "dev");
                assert_eq!(args, ["-c", "select 1", "-X"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn up_flags_parse() {
        let cli = parse(&["local", "up", "--xfs-image", "8G", "--pg-user", "pg"]).unwrap();
        match cli.command {
            Command::Local(LocalCommand::Up(up)) => {
                assert_eq!(up.xfs_image, Some(8 << 30));
                assert_eq!(up.pg_user.as_deref(), Some("pg"));
                assert!(!up.foreground && !up.detached);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["local", "up", "--tls-required"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Local(LocalCommand::Up(up)) if up.tls_required
        ));
        let cli = parse(&["local", "up", "--backup", "s3://b-1/p", "--recover"]).unwrap();
        match cli.command {
            Command::Local(LocalCommand::Up(up)) => {
                assert_eq!(up.backup.backup_repo.as_deref(), Some("s3://b-1/p"));
                assert_eq!(up.backup.backup_uri_style, "host");
                assert!(up.recover);
            }
            other => panic!("parsed as {other:?}"),
        }
        // --detached is internal and only means something with --foreground.
        assert!(parse(&["local", "up", "--detached"]).is_err());
    }

    #[test]
    fn restore_takes_points_and_a_source() {
        let cli = parse(&["branch", "restore", "dev", "--at", "-10m", "--no-backup"]).unwrap();
        match cli.command {
            Command::Branch(BranchCommand::Restore(r)) => {
                assert!(matches!(r.at, Some(HistoryPoint::At(At::Time(_)))));
                assert!(r.no_backup);
                assert_eq!(r.from, None);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["branch", "restore", "dev", "--from", "main"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Branch(BranchCommand::Restore(RestoreArgs { at: None, .. }))
        ));
        let err = parse(&["branch", "restore", "dev", "--at", "checkpoint:"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn expire_needs_exactly_one_of_in_at_never() {
        let cli = parse(&["branch", "expire", "pr-1", "--in", "2h"]).unwrap();
        match cli.command {
            Command::Branch(BranchCommand::Expire(e)) => assert_eq!(e.in_, Some(7200)),
            other => panic!("parsed as {other:?}"),
        }
        assert!(parse(&["branch", "expire", "pr-1", "--never"]).is_ok());
        assert!(parse(&["branch", "expire", "pr-1", "--at", "2030-01-01T00:00:00Z"]).is_ok());
        let none = parse(&["branch", "expire", "pr-1"]).unwrap_err();
        assert_eq!(none.kind(), ErrorKind::MissingRequiredArgument);
        let two = parse(&["branch", "expire", "pr-1", "--in", "2h", "--never"]).unwrap_err();
        assert_eq!(two.kind(), ErrorKind::ArgumentConflict);
        let bad = parse(&["branch", "expire", "pr-1", "--in", "soon"]).unwrap_err();
        assert_eq!(bad.exit_code(), 2);
    }

    #[test]
    fn create_expiry_and_protection_exclude_each_other() {
        let c = create_args(&[
            "branch",
            "create",
            "pr-1",
            "--parent",
            "main",
            "--expires-in",
            "3s",
        ]);
        assert_eq!(c.expires_in, Some(3));
        let err =
            parse(&["branch", "create", "m", "--protected", "--expires-in", "1h"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn run_takes_the_command_after_the_separator() {
        let cli = parse(&[
            "run",
            "--from",
            "main",
            "--name-prefix",
            "ci",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        match cli.command {
            Command::Run(r) => {
                assert_eq!(r.from, "main");
                assert_eq!(r.name_prefix, "ci");
                assert_eq!(r.command, ["sh", "-c", "exit 3"]);
                assert_eq!(r.expires_in, 24 * 3600);
            }
            other => panic!("parsed as {other:?}"),
        }
        let err = parse(&["run", "--from", "main"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn diff_takes_branches_with_optional_points() {
        let cli = parse(&[
            "diff",
            "agent@checkpoint:step-3",
            "main",
            "--data",
            "--exit-code",
        ])
        .unwrap();
        match cli.command {
            Command::Diff(d) => {
                assert_eq!(d.a.name, "agent");
                assert_eq!(d.a.at, Some(HistoryPoint::Checkpoint("step-3".into())));
                assert_eq!(d.a.label, "agent@checkpoint:step-3");
                assert_eq!(
                    d.b.as_ref().map(|b| (b.name.as_str(), b.at.is_none())),
                    Some(("main", true))
                );
                assert!(d.data && d.exit_code);
                assert_eq!(d.unified, 3);
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = parse(&["diff", "dev"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Diff(DiffArgs { b: None, .. })
        ));
        let err = parse(&["diff", "dev@yesterday"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("checkpoint:NAME"), "{err}");
        assert_eq!(parse(&["diff", "@-1h"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn checkpoint_name_is_optional() {
        let cli = parse(&["checkpoint", "create", "agent"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Checkpoint(CheckpointCommand::Create { name: None, .. })
        ));
    }
}
