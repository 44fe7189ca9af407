#!/usr/bin/env python3
"""Soak test of local mode: a random schedule of branch operations and crashes while a
bank-transfer workload runs on the roots, with every branch checked after every step.

    e2e/soak/soak.py [path/to/ramify]        (make soak)

SOAK_MINUTES (default 10) bounds the run; SOAK_SKIP=op,op leaves operations out (to get
past a known fault); SOAK_SEED replays a schedule (the same seed
draws the same operations on the same branches in the same order; what the workload has
committed at each moment depends on timing, so a replay is the same schedule, not the
same bytes). SOAK_OUT names the directory for the operation log, the violations and a
copy of the daemon log (default target/soak/<seed>-<UTC time>); SOAK_KEEP=1 keeps the
data directory.

The model. Every ledger row gets a client-chosen id; for each one the workload records
the time before COMMIT was sent and the time its acknowledgement arrived (None while in
flight or when the connection broke: the outcome is then unknown). A branch's expected
content is such a history plus a cut: rows acknowledged before the cut's start must be
there, rows whose COMMIT was sent after its end, and rows the history does not know,
must not. A fork at a time T has the cut (T, T); at an LSN or a checkpoint, (just before
the LSN was read or the checkpoint requested, just after); at latest and for a reset,
(just before the request, just after). Once a non-root branch passes its check its
history is resolved to what it holds, so the next check of it is exact. An operation the
daemon was killed in the middle of may have happened or not: both outcomes are kept as
alternatives and the branch must match one of them.

Invariants, per branch and step: the total balance is constant; every balance equals
its initial value plus the ledger's credits minus its debits; the ledger matches the
expected content as above; pg_amcheck (heap and btree, heapallindexed; parent-check on
branches nobody writes to) finds nothing; the branch answers within STUCK_SECS. The
branch role `app` may not create the amcheck extension (it is not a trusted extension
and the role is no superuser), so pg_amcheck connects the way local mode's own
administration does: as the `postgres` superuser over the compute's Unix socket in the
timeline's run directory, which pg_hba trusts and only root and the Postgres user can
enter.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from datetime import datetime, timezone

import psycopg

PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
ACCOUNTS = 50
INITIAL = 1000
TOTAL = ACCOUNTS * INITIAL
ROOTS = ("bank-a", "bank-b")
MAX_CHILDREN = 7
# A branch that does not answer (or an API that keeps failing) for this long is stuck.
STUCK_SECS = 90
# Errors of a branch that no waiting can cure.
PERMANENT = ("does not exist", "password authentication failed")
NEG = float("-inf")
POS = float("inf")


def utc(t):
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_utc(s):
    # 2026-12-04T18:30:18.984355259Z: Python takes at most microseconds.
    s = s.rstrip("Z")
    if "." in s:
        head, frac = s.split(".")
        s = head + "." + frac[:6]
    else:
        s = s + ".0"
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%f").replace(tzinfo=timezone.utc).timestamp()


class Ids:
    """Ledger ids, unique across the whole run (every branch and the workload)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0

    def next(self):
        with self.lock:
            self.n += 1
            return self.n


class Soak:
    def __init__(self, ramify, seed, minutes, out):
        # SOAK_SKIP=kill-during,restore: operations left out (to get past a known fault).
        self.skip = {o.strip() for o in os.environ.get("SOAK_SKIP", "").split(",") if o.strip()}
        unknown = self.skip - {o for o, _ in self.SCHEDULE}
        if unknown:
            sys.exit(f"error: SOAK_SKIP names {sorted(unknown)}; the operations are {[o for o, _ in self.SCHEDULE]}")
        self.seed = seed
        self.rng = random.Random(seed)
        self.minutes = minutes
        self.out = out
        self.work = tempfile.mkdtemp(prefix="soak-", dir="/var/tmp")  # short: socket paths max 107 bytes
        os.chmod(self.work, 0o755)
        # The run uses a copy: others may rebuild target/debug/ramify meanwhile.
        self.ramify = os.path.join(self.work, "ramify")
        shutil.copy2(ramify, self.ramify)
        os.chmod(self.ramify, 0o755)
        self.data = os.path.join(self.work, "data")
        os.makedirs(self.data)
        self.env = dict(os.environ, RAMIFY_DATA_DIR=self.data, PATH=PGBIN + ":" + os.environ["PATH"])
        self.ids = Ids()
        self.log_file = open(os.path.join(out, "ops.jsonl"), "w")
        self.log_lock = threading.Lock()
        self.stop = threading.Event()
        # name -> dict(kind=root|branch, alts=[(history, lo, hi)], uri=..., checkpoints={name: (history, lo, hi)})
        self.branches = {}
        self.hist_lock = threading.Lock()
        self.root_hist = {r: {} for r in ROOTS}
        self.ops = {}
        self.op_errors = []
        self.checks = {}
        self.violations = []
        self.step = 0
        self.workers = []
        self.tx = {r: [0, 0] for r in ROOTS}  # acknowledged, in doubt
        self.daemon_kills = 0
        self.stuck_since = {}
        self.pending_fork = None
        # (branch, alternatives(), label) of a reset or restore in flight: if the daemon
        # is killed after it switched the branch but before the CLI heard, the branch
        # holds what the operation made.
        self.pending_alt = None

    # ---------- bookkeeping ----------
    def log(self, **kv):
        kv["t"] = utc(time.time())
        kv["step"] = self.step
        with self.log_lock:
            self.log_file.write(json.dumps(kv, default=str) + "\n")
            self.log_file.flush()

    def count(self, table, key, n=1):
        table[key] = table.get(key, 0) + n

    def violation(self, branch, what, detail):
        v = {
            "seed": self.seed,
            "step": self.step,
            "time": utc(time.time()),
            "branch": branch,
            "what": what,
            "detail": detail,
            "daemon_log": self.daemon_log_tail(40),
        }
        self.violations.append(v)
        self.log(event="violation", **v)
        print(f"  VIOLATION step {self.step} {branch}: {what}: {str(detail)[:600]}", flush=True)

    def daemon_log_tail(self, n):
        try:
            with open(os.path.join(self.data, "local", "daemon.log"), errors="replace") as f:
                return f.readlines()[-n:]
        except OSError as e:
            return [f"(no daemon log: {e})"]

    # ---------- the CLI ----------
    def cli(self, *args, timeout=300, check=True):
        t0 = time.time()
        p = subprocess.run(
            [self.ramify, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        self.log(event="cli", args=list(args), rc=p.returncode, secs=round(time.time() - t0, 3),
                 stdout=p.stdout[-2000:], stderr=p.stderr[-2000:])
        if check and p.returncode != 0:
            raise CliError(args, p.returncode, p.stderr.strip() or p.stdout.strip())
        return p

    def cli_json(self, *args, **kw):
        p = self.cli(*args, "-o", "json", **kw)
        return json.loads(p.stdout) if p.stdout.strip() else None

    def daemon_pid(self):
        try:
            with open(os.path.join(self.data, "local", "daemon.json")) as f:
                return json.load(f)["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def up(self):
        deadline = time.time() + STUCK_SECS
        while True:
            p = self.cli("local", "up", "--xfs-image", "6G", check=False)
            if p.returncode == 0:
                return
            if time.time() > deadline:
                self.violation("-", "local mode does not come back up", p.stderr.strip())
                raise Abort("local mode is down")
            time.sleep(1)

    def branch_view(self, name):
        p = self.cli("branch", "get", name, "-o", "json", check=False)
        if p.returncode != 0:
            if "does not exist" in p.stderr or "unknown branch" in p.stderr:
                return None
            raise CliError(("branch", "get", name), p.returncode, p.stderr.strip())
        return json.loads(p.stdout)

    def must_view(self, name):
        v = self.branch_view(name)
        if v is None:
            raise CliError(("branch", "get", name), 1, "does not exist (deleted with a parent, or by an interrupted operation)")
        return v

    def list_branches(self):
        return {b["name"]: b for b in self.cli_json("branch", "list")}

    # ---------- the workload ----------
    def connect(self, uri, timeout=5):
        return psycopg.connect(uri, connect_timeout=timeout, autocommit=False)

    def workload(self, root, idx):
        rng = random.Random(self.seed * 1000 + idx)
        hist = self.root_hist[root]
        uri = self.branches[root]["uri"]
        conn = None
        backoff = 0.1
        while not self.stop.is_set():
            try:
                if conn is None:
                    conn = self.connect(uri)
                    backoff = 0.1
                src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
                amount = rng.randint(1, 100)
                lid = self.ids.next()
                with conn.cursor() as cur:
                    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
                    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))
                    cur.execute("INSERT INTO ledger (id, src, dst, amount) VALUES (%s, %s, %s, %s)",
                                (lid, src, dst, amount))
                entry = [time.time(), None]
                with self.hist_lock:
                    hist[lid] = entry
                try:
                    conn.commit()
                except Exception:
                    self.tx[root][1] += 1
                    raise
                entry[1] = time.time()
                self.tx[root][0] += 1
                time.sleep(rng.uniform(0, 0.01))
            except Exception as e:
                self.log(event="workload_error", root=root, error=str(e)[:300])
                try:
                    if conn is not None:
                        conn.close()
                except Exception:
                    pass
                conn = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        if conn is not None:
            conn.close()

    def setup_bank(self, uri):
        with psycopg.connect(uri, connect_timeout=30, autocommit=True) as c:
            c.execute(f"""
                CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL);
                INSERT INTO accounts SELECT g, {INITIAL} FROM generate_series(1, {ACCOUNTS}) g;
                CREATE TABLE ledger (id bigint PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
                                     amount int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
                CREATE INDEX ledger_src ON ledger (src);
                CREATE INDEX ledger_dst ON ledger (dst);
            """)

    def burst(self, name, n):
        """n transfers on a non-root branch, synchronously; returns its new history entries."""
        b = self.branches[name]
        rng = random.Random(self.rng.random())
        entries = {}
        conn = self.connect(b["uri"], timeout=30)
        try:
            for _ in range(n):
                src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
                amount = rng.randint(1, 100)
                lid = self.ids.next()
                with conn.cursor() as cur:
                    cur.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
                    cur.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))
                    cur.execute("INSERT INTO ledger (id, src, dst, amount) VALUES (%s, %s, %s, %s)",
                                (lid, src, dst, amount))
                entry = [time.time(), None]
                entries[lid] = entry
                conn.commit()
                entry[1] = time.time()
        except psycopg.Error as e:
            # What was acknowledged is recorded; the last one is in doubt.
            self.log(event="burst_error", branch=name, error=str(e)[:300])
        finally:
            try:
                conn.close()
            except psycopg.Error:
                pass
        return entries

    # ---------- checks ----------
    def pgdata(self, timeline):
        return os.path.join(self.data, "storage", "timelines", timeline, "pgdata")

    def amcheck(self, name, timeline, parent_check):
        """pg_amcheck as the superuser over the compute's socket; None when clean,
        'retry' when the compute went away meanwhile, else the report."""
        try:
            with open(os.path.join(self.pgdata(timeline), "postmaster.pid")) as f:
                lines = f.read().splitlines()
            port, sockdir = lines[3].strip(), lines[4].strip()
        except (OSError, IndexError):
            return "retry"
        args = [os.path.join(PGBIN, "pg_amcheck"), "-h", sockdir, "-p", port, "-U", "postgres",
                "-d", "app", "--heapallindexed", "--install-missing", "--no-password"]
        if parent_check:
            args.append("--parent-check")
        p = subprocess.run(args, capture_output=True, text=True, timeout=300)
        out = (p.stdout + p.stderr).strip()
        # 0: nothing found (a NOTICE about the extension may be printed); 2: corruption.
        if p.returncode == 0:
            return None
        if "connection to server" in out or "could not connect" in out or "terminating connection" in out \
                or "the database system is" in out or "server closed the connection" in out:
            return "retry"
        return f"pg_amcheck exit {p.returncode}: {out[:3000]}"

    def read_state(self, uri):
        with self.connect(uri, timeout=30) as conn:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            total, n = conn.execute("SELECT coalesce(sum(balance), 0), count(*) FROM accounts").fetchone()
            bad = conn.execute(f"""
                SELECT a.id, a.balance, {INITIAL} + coalesce(cr.s, 0) - coalesce(db.s, 0)
                FROM accounts a
                LEFT JOIN (SELECT dst, sum(amount) s FROM ledger GROUP BY dst) cr ON cr.dst = a.id
                LEFT JOIN (SELECT src, sum(amount) s FROM ledger GROUP BY src) db ON db.src = a.id
                WHERE a.balance <> {INITIAL} + coalesce(cr.s, 0) - coalesce(db.s, 0)""").fetchall()
            ids = {r[0] for r in conn.execute("SELECT id FROM ledger")}
            conn.rollback()
        return total, n, bad, ids

    @staticmethod
    def compare(ids, hist, lo, hi):
        """Rows that must be there and are not; rows that must not be there and are."""
        missing, extra = [], []
        for lid, (sent, ack) in hist.items():
            if ack is not None and ack < lo and lid not in ids:
                missing.append((lid, sent, ack))
        for lid in ids:
            e = hist.get(lid)
            if e is None or e[0] > hi:
                extra.append((lid, e))
        return missing, extra

    def check_branch(self, name):
        b = self.branches[name]
        first = time.time()
        deadline = first + STUCK_SECS
        last = view = None
        while True:
            try:
                view = self.branch_view(name)
                if view is None:
                    self.violation(name, "branch vanished", "`branch get` says it does not exist")
                    del self.branches[name]
                    return
                started = time.time()
                total, n, bad, ids = self.read_state(b["uri"])
                am = self.amcheck(name, view["timeline_id"], parent_check=b["kind"] != "root")
                if am == "retry":
                    raise Retry("compute went away during pg_amcheck")
                break
            except (psycopg.Error, Retry, CliError, OSError) as e:
                last = e
                # A refusal no retry can change ends the wait early.
                permanent = any(m in str(e) for m in PERMANENT)
                if b.get("reported_down"):
                    if time.time() > first + 5:
                        return  # reported already; see whether it comes back next step
                elif time.time() > (min(deadline, first + 10) if permanent else deadline):
                    self.violation(name, f"branch does not answer for {round(time.time() - first)} s",
                                   {"error": str(last)[:1000], "branch": b["how"],
                                    "timeline": view and view["timeline_id"], "compute": view and view["compute"]})
                    self.quarantine(name)
                    return
                time.sleep(1)
        if b.pop("reported_down", None):
            self.log(event="answers_again", branch=name)
        self.count(self.checks, "branch checks")
        if total != TOTAL or n != ACCOUNTS:
            self.violation(name, "total balance changed", f"{n} accounts holding {total}, expected {ACCOUNTS} holding {TOTAL}")
        self.count(self.checks, "total balance")
        if bad:
            self.violation(name, "balances disagree with the ledger", f"(account, balance, from ledger): {bad[:10]}")
        self.count(self.checks, "balance = ledger")
        if am is not None:
            self.violation(name, "pg_amcheck reports corruption", am)
        self.count(self.checks, "pg_amcheck")
        # The expected content: one alternative must match.
        with self.hist_lock:
            if b["kind"] == "root":
                alts = [(dict(self.root_hist[name]), started, POS)]
            else:
                alts = b["alts"]
        results = [self.compare(ids, h, lo, hi) for (h, lo, hi) in alts]
        match = next((i for i, (m, x) in enumerate(results) if not m and not x), None)
        self.count(self.checks, f"content: {b.get('kind_of', b['how']) if b['kind'] != 'root' else 'root, every ack'}")
        if match is None:
            m, x = results[0]
            detail = {
                "expected": b["how"],
                "cut": [utc(alts[0][1]) if alts[0][1] not in (NEG, POS) else str(alts[0][1]),
                        utc(alts[0][2]) if alts[0][2] not in (NEG, POS) else str(alts[0][2])],
                "alternatives": len(alts),
                "missing (acknowledged before the cut)": [(lid, utc(s), utc(a)) for lid, s, a in m[:10]],
                "missing_count": len(m),
                "unexpected (sent after the cut, or unknown)": [(lid, e and [utc(e[0]), e[1] and utc(e[1])]) for lid, e in x[:10]],
                "unexpected_count": len(x),
                "rows": len(ids),
            }
            what = "committed transactions lost" if m else "rows that must not be there"
            if b["kind"] != "root":
                what = f"{b['how']}: {what}"
            self.violation(name, what, detail)
            # Carry on from what the branch holds, so one fault is reported once.
            match = 0
        if b["kind"] != "root":
            h, lo, hi = alts[match]
            resolved = {}
            for lid in ids:
                e = h.get(lid)
                if e is None:
                    resolved[lid] = (NEG, NEG)
                else:
                    sent, ack = e
                    resolved[lid] = (min(sent, lo), min(ack if ack is not None else POS, hi))
            b["alts"] = [(resolved, POS, POS)]
            self.set_how(name, "unchanged since the last check")

    def quarantine(self, name):
        """A branch reported as unusable is deleted, so one fault costs one wait; a root
        (its workload keeps trying) is only checked briefly from then on."""
        if self.branches[name]["kind"] == "root":
            self.branches[name]["reported_down"] = True
            return
        p = self.cli("branch", "delete", name, "--force", check=False)
        self.log(event="quarantined", branch=name, deleted=p.returncode == 0)
        self.branches.pop(name, None)
        if p.returncode == 0:
            listed = self.list_branches()
            for n in [n for n in self.branches if n not in listed]:
                self.log(event="deleted_with_parent", branch=n)
                del self.branches[n]
        else:
            self.violation(name, "an unusable branch cannot be deleted", p.stderr.strip())

    def check_processes(self):
        """Every compute of this data directory is a child of the running daemon."""
        pid = self.daemon_pid()
        p = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True)
        orphans = []
        for line in p.stdout.splitlines()[1:]:
            parts = line.split(None, 2)
            if len(parts) == 3 and parts[2].startswith(os.path.join(PGBIN, "postgres") + " -D " + self.data):
                if str(pid) != parts[1]:
                    orphans.append(line.strip())
        self.count(self.checks, "no orphaned compute")
        now = time.time()
        for line in orphans:
            key = "orphan " + line.split()[0]
            first = self.stuck_since.setdefault(key, now)
            if now - first > 30 and not self.stuck_since.get("reported " + key):
                self.stuck_since["reported " + key] = now
                self.violation("-", "a Postgres no daemon supervises, for 30 s", line)

    def storage_get(self, path):
        with open(os.path.join(self.data, "local", "daemon.json")) as f:
            d = json.load(f)
        req = urllib.request.Request(d["storage_url"] + path,
                                     headers={"Authorization": "Bearer " + d["storage_token"]})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def check_timelines(self, listed):
        """Every timeline belongs to a branch or is the ancestor of one's, and every
        timeline directory is one the node lists: what a crash half-made is cleaned up."""
        try:
            tls = {t["id"]: t for t in self.storage_get("/v1/timelines?sizes=false")}
        except (OSError, ValueError, KeyError) as e:
            self.log(event="timelines_unreadable", error=str(e))
            return
        keep = set()
        for b in listed.values():
            t = b["timeline_id"]
            while t and t not in keep:
                keep.add(t)
                t = (tls.get(t) or {}).get("parent")
        stray = {f"timeline {t} (no branch, no branch's ancestor)" for t in tls if t not in keep}
        try:
            dirs = set(os.listdir(os.path.join(self.data, "storage", "timelines")))
        except OSError:
            dirs = set()
        stray |= {f"directory storage/timelines/{d} (not a timeline the node lists)" for d in dirs - set(tls)}
        self.count(self.checks, "no stray timeline")
        now = time.time()
        for k in list(self.stuck_since):
            if k.startswith("stray ") and k[6:] not in stray:
                del self.stuck_since[k]
        for x in sorted(stray):
            first = self.stuck_since.setdefault("stray " + x, now)
            if now - first > 60 and not self.stuck_since.get("reported " + x):
                self.stuck_since["reported " + x] = now
                self.violation("-", "left behind for 60 s", x)

    def check_all(self):
        try:
            listed = self.list_branches()
        except CliError as e:
            # Once, with how long, when it lasts: a short failure after a SIGKILL is not one.
            first = self.stuck_since.setdefault("list", time.time())
            self.log(event="list_failed", error=str(e))
            if time.time() - first > STUCK_SECS:
                self.violation("-", f"`branch list` fails for {round(time.time() - first)} s", str(e))
                raise Abort("local mode does not answer `branch list` any more") from e
            return
        self.stuck_since.pop("list", None)
        for name in sorted(set(listed) - set(self.branches)):
            # A branch the schedule does not know: a restore's backup made by an operation
            # the daemon was killed in; it must be whole and consistent.
            b = listed[name]
            self.add_branch(name, b, [({}, POS, NEG)], "adopted (content not known)")
            self.log(event="adopted", branch=name)
            print(f"  note: adopted branch {name} nobody asked for", flush=True)
        for name in sorted(set(self.branches) - set(listed)):
            self.violation(name, "branch vanished", "not in `branch list`")
            del self.branches[name]
        for name in sorted(self.branches):
            if name not in self.branches:  # deleted with a quarantined parent
                continue
            if self.branches[name]["how"].startswith("adopted"):
                self.check_adopted(name)
            else:
                self.check_branch(name)
        self.check_processes()
        self.check_timelines(listed)

    def check_adopted(self, name):
        # Accept any content that is internally consistent: resolve to what it holds.
        b = self.branches[name]
        try:
            _, _, _, ids = self.read_state(b["uri"])
            b["alts"] = [({lid: (NEG, NEG) for lid in ids}, POS, POS)]
            self.set_how(name, "adopted")
        except psycopg.Error:
            pass
        self.check_branch(name)

    # ---------- operations ----------
    def new_name(self, prefix):
        self.count(self.ops, "_names")
        return f"{prefix}-{self.ops['_names']}"

    def children(self):
        return [n for n, b in self.branches.items() if b["kind"] != "root"]

    def snapshot_hist(self, name):
        b = self.branches[name]
        with self.hist_lock:
            if b["kind"] == "root":
                return dict(self.root_hist[name])
            return dict(b["alts"][0][0])

    def add_branch(self, name, view, alts, how):
        self.branches[name] = {"kind": "branch", "uri": view["uri"], "alts": alts, "how": how,
                               "checkpoints": {}}
        self.set_how(name, how)

    def set_how(self, name, how):
        """The label says exactly what was done; kind_of groups the table's rows."""
        b = self.branches[name]
        b["how"] = how
        b["kind_of"] = how.split(" of ")[0].split(" at ")[0].split(" to ")[0].split(" (")[0]

    def op_create(self):
        name = self.new_name("new")
        view = self.cli_json("branch", "create", name, "--suspend-after", "0")
        self.add_branch(name, view, [({}, POS, NEG)], "fresh root")
        # Until the bank is set up the branch is not one the checks apply to; a kill of
        # the daemon in between leaves it to finish_setup.
        self.branches[name]["setup_pending"] = True
        self.setup_bank(view["uri"])
        self.branches[name].pop("setup_pending")
        # Its history before this holds no bank (an empty database): not what the checks
        # of a fork expect, so forks and restores by time pick later moments.
        self.branches[name]["ready_at"] = time.time()
        self.branches[name]["alts"] = [(self.burst(name, self.rng.randint(5, 50)), POS, NEG)]
        # The burst's acknowledged rows must be there, unacknowledged ones may.
        h = self.branches[name]["alts"][0][0]
        self.branches[name]["alts"] = [(h, POS, POS)]
        self.set_how(name, "new root with a burst")

    def finish_setup(self, name):
        """Sets up the bank of a new root whose setup a SIGKILL of the daemon cut short.
        The setup is one statement string, so it happened entirely or not at all."""
        b = self.branches[name]
        with self.connect(b["uri"], timeout=60) as c:
            exists = c.execute("SELECT to_regclass('accounts') IS NOT NULL").fetchone()[0]
        if not exists:
            self.setup_bank(b["uri"])
        b.pop("setup_pending")
        b["ready_at"] = time.time()
        b["alts"] = [({}, POS, POS)]
        self.set_how(name, "new root (setup interrupted, then finished)")
        self.log(event="setup_finished", branch=name, had_tables=exists)

    def fork(self, how):
        with_cps = sorted(n for n, b in self.branches.items() if b["checkpoints"])
        if how == "fork-checkpoint" and with_cps:
            parent = self.rng.choice(with_cps)
        else:
            parent = self.rng.choice(sorted(self.branches))
        name = self.new_name(how.replace(" ", ""))
        args = ["branch", "create", name, "--parent", parent, "--suspend-after", "0"]
        pb = self.branches[parent]
        label = f"{how} of {parent}"
        if how == "fork-latest":
            lo = time.time()
            # What an interrupted create is held to, if its branch turns up after all.
            self.pending_fork = (name, self.snapshot_hist(parent), lo, None, label)
            view = self.cli_json(*args)
            hi = time.time()
            hist = self.snapshot_hist(parent)
        elif how == "fork-lsn":
            lo = time.time()
            with self.connect(pb["uri"], timeout=30) as c:
                lsn = c.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
            hi = time.time()
            hist = self.snapshot_hist(parent)
            label += f" at {lsn}"
            view = self.cli_json(*args, "--at", str(lsn))
        elif how == "fork-time":
            pv = self.must_view(parent)
            start = max(parse_utc(pv["restore_window"]["from_time"]), time.time() - 40, pb.get("ready_at", NEG))
            t = self.rng.uniform(start, max(start, time.time() - 0.2))
            lo = hi = t
            hist = self.snapshot_hist(parent)
            label += f" at {utc(t)}"
            self.pending_fork = (name, hist, lo, hi, label)
            view = self.cli_json(*args, "--at", utc(t))
        elif how == "fork-checkpoint":
            if not pb["checkpoints"]:
                return self.op_checkpoint(parent)
            cp = self.rng.choice(sorted(pb["checkpoints"]))
            hist, lo, hi = pb["checkpoints"][cp]
            label = f"fork at checkpoint {parent}@{cp}"
            view = self.cli_json(*args, "--at", f"checkpoint:{cp}")
        self.add_branch(name, view, [(hist, lo, hi)], label)

    def op_checkpoint(self, name=None):
        name = name or self.rng.choice(sorted(self.branches))
        b = self.branches[name]
        cp = f"cp{self.step}"
        lo = time.time()
        self.cli_json("checkpoint", "create", name, cp)
        hi = time.time()
        b["checkpoints"][cp] = (self.snapshot_hist(name), lo, hi)

    def op_reset(self):
        kids = [n for n in self.children() if self.branch_parent(n)]
        if not kids:
            return self.fork("fork-latest")
        name = self.rng.choice(sorted(kids))
        parent = self.branch_parent(name)
        lo = time.time()
        self.pending_alt = (name, lambda: [(self.snapshot_hist(parent), lo, time.time())], f"reset to {parent}")
        self.cli_json("branch", "reset", name)
        self.pending_alt = None
        hi = time.time()
        b = self.branches[name]
        b["alts"] = [(self.snapshot_hist(parent), lo, hi)]
        self.set_how(name, f"reset to {parent}")
        b["checkpoints"] = {}

    def branch_parent(self, name):
        v = self.branch_view(name)
        p = v and v.get("parent")
        return p if p in self.branches and not self.branches[p]["how"].startswith("adopted") else None

    def op_restore(self):
        kids = self.children()
        if not kids:
            return self.fork("fork-time")
        name = self.rng.choice(sorted(kids))
        b = self.branches[name]
        v = self.must_view(name)
        start = max(parse_utc(v["restore_window"]["from_time"]), time.time() - 60, b.get("ready_at", NEG))
        t = self.rng.uniform(start, max(start, time.time() - 0.2))
        hist = self.snapshot_hist(name)
        args = ["branch", "restore", name, "--at", utc(t)]
        backup = self.rng.random() < 0.5
        if not backup:
            args.append("--no-backup")
        self.pending_alt = (name, lambda: [(hist, t, t)], f"restore at {utc(t)}")
        out = self.cli_json(*args)
        self.pending_alt = None
        b["alts"] = [(hist, t, t)]
        self.set_how(name, f"restore at {utc(t)}")
        b["checkpoints"] = {}
        if backup and out and out.get("backup"):
            bv = self.must_view(out["backup"])
            self.add_branch(out["backup"], bv, [(hist, POS, POS)], f"backup of {name}")

    def op_burst(self):
        kids = self.children()
        if not kids:
            return self.fork("fork-latest")
        name = self.rng.choice(sorted(kids))
        b = self.branches[name]
        new = self.burst(name, self.rng.randint(5, 100))
        h = dict(b["alts"][0][0])
        h.update(new)
        b["alts"] = [(h, POS, POS)]
        self.set_how(name, "burst of transfers")

    def op_delete(self):
        kids = self.children()
        if not kids:
            return
        name = self.rng.choice(sorted(kids))
        # --force: the children go too (they are found gone below).
        self.cli("branch", "delete", name, "--force")
        del self.branches[name]
        # A forced delete takes descendants with it.
        listed = self.list_branches()
        for n in [n for n in self.branches if n not in listed]:
            self.log(event="deleted_with_parent", branch=n)
            del self.branches[n]

    def op_suspend(self):
        name = self.rng.choice(sorted(self.branches))
        self.cli_json("branch", "suspend", name)

    def op_wake(self):
        name = self.rng.choice(sorted(self.branches))
        self.cli_json("branch", "wake", name)

    def op_kill_compute(self):
        name = self.rng.choice(sorted(self.branches))
        v = self.must_view(name)
        try:
            with open(os.path.join(self.pgdata(v["timeline_id"]), "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, signal.SIGKILL)
            self.log(event="sigkill_compute", branch=name, pid=pid)
        except (OSError, ValueError) as e:
            self.log(event="sigkill_compute_skipped", branch=name, why=str(e))

    def kill_daemon(self):
        pid = self.daemon_pid()
        if pid is None:
            raise Abort("no daemon file")
        os.kill(pid, signal.SIGKILL)
        while os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)
        self.daemon_kills += 1
        self.log(event="sigkill_daemon", pid=pid)

    def op_kill_daemon(self):
        self.kill_daemon()
        time.sleep(self.rng.uniform(0, 2))
        self.up()

    def op_kill_during(self):
        """SIGKILL of the daemon while a create, fork, reset, restore or delete runs."""
        inner = self.rng.choice(["fork-latest", "fork-time", "reset", "restore", "delete", "create"])
        delay = self.rng.uniform(0.0, 1.5)
        self.count(self.ops, f"kill-during: {inner}")
        before = {n: (dict(b), list(b.get("alts", []))) for n, b in self.branches.items()}
        self.pending_fork = None
        self.pending_alt = None
        names_before = set(self.branches)
        err = []

        def run():
            try:
                self.run_inner(inner)
            except Exception as e:
                err.append(e)

        th = threading.Thread(target=run)
        th.start()
        time.sleep(delay)
        self.kill_daemon()
        th.join()
        self.log(event="interrupted", op=inner, delay=round(delay, 3), error=str(err[0])[:300] if err else None)
        self.up()
        # Either outcome is fine: keep both as alternatives.
        listed = self.list_branches()
        for n, (b_old, alts_old) in before.items():
            if n not in self.branches:  # the operation deleted it (or meant to)
                if n in listed:
                    self.branches[n] = b_old
                    b_old["alts"] = alts_old
                    self.set_how(n, f"delete interrupted ({inner})")
                continue
            b = self.branches[n]
            if b["kind"] != "root" and b["alts"] != alts_old:
                b["alts"] = b["alts"] + alts_old
                self.set_how(n, f"{inner} interrupted")
        if self.pending_alt and self.pending_alt[0] in self.branches and self.pending_alt[0] in listed:
            # Killed during a reset or restore whose CLI call did not return: it may
            # have switched the branch. Its checkpoints may be gone with the old timeline.
            n, make, label = self.pending_alt
            b = self.branches[n]
            b["alts"] = b["alts"] + make()
            b["checkpoints"] = {}
            self.set_how(n, f"{label} (interrupted)")
        if self.pending_fork and self.pending_fork[0] in listed and self.pending_fork[0] not in self.branches:
            # Killed after the branch was made but before the CLI answered.
            name, hist, lo, hi, how = self.pending_fork
            self.add_branch(name, listed[name], [(hist, lo, hi if hi is not None else time.time())],
                            f"{how} (interrupted)")
        for n in set(self.branches) - names_before:
            if n not in listed:
                del self.branches[n]
            elif self.branches[n].get("setup_pending"):
                self.finish_setup(n)
        for n in set(self.branches):
            if n not in listed:
                del self.branches[n]
                self.log(event="gone_after_interrupt", branch=n)

    def run_inner(self, op):
        if op in ("fork-latest", "fork-time"):
            self.fork(op)
        else:
            getattr(self, "op_" + op)()

    SCHEDULE = [
        ("create", 1), ("fork-latest", 3), ("fork-lsn", 2), ("fork-time", 3), ("fork-checkpoint", 2),
        ("checkpoint", 2), ("reset", 2), ("restore", 3), ("burst", 2), ("delete", 2), ("suspend", 2),
        ("wake", 1), ("kill-compute", 2), ("kill-daemon", 1), ("kill-during", 2),
    ]

    def pick(self):
        ops, weights = zip(*[(o, w) for o, w in self.SCHEDULE if o not in self.skip])
        op = self.rng.choices(ops, weights)[0]
        if op in ("create", "fork-latest", "fork-lsn", "fork-time", "fork-checkpoint") and len(self.children()) >= MAX_CHILDREN:
            op = "delete"
        return op

    def do(self, op):
        if op.startswith("fork-"):
            self.fork(op)
        else:
            getattr(self, "op_" + op.replace("-", "_"))()

    # ---------- the run ----------
    def run(self):
        print(f"soak: seed {self.seed}, {self.minutes} min, data {self.data}, log {self.out}"
              + (f", leaving out {sorted(self.skip)}" if self.skip else ""), flush=True)
        self.up()
        for r in ROOTS:
            view = self.cli_json("branch", "create", r, "--suspend-after", "0")
            self.branches[r] = {"kind": "root", "uri": view["uri"], "how": "root (every acknowledged commit)",
                                "checkpoints": {}}
            self.setup_bank(view["uri"])
            self.branches[r]["ready_at"] = time.time()
        for i, r in enumerate(ROOTS):
            t = threading.Thread(target=self.workload, args=(r, i), daemon=True)
            t.start()
            self.workers.append(t)
        time.sleep(2)
        deadline = time.time() + self.minutes * 60
        while time.time() < deadline:
            self.step += 1
            op = self.pick()
            t0 = time.time()
            self.log(event="op", op=op)
            try:
                self.do(op)
                self.count(self.ops, op)
                result = "ok"
            except CliError as e:
                self.count(self.ops, op + " (refused/failed)")
                self.op_errors.append({"step": self.step, "op": op, "error": str(e)})
                result = f"error: {e}"
                if not self.daemon_alive():
                    self.violation("-", "the daemon died on its own", self.daemon_log_tail(40))
                    self.up()
            except psycopg.Error as e:
                self.count(self.ops, op + " (client error)")
                self.op_errors.append({"step": self.step, "op": op, "error": str(e)})
                result = f"client error: {e}"
            except (Abort, KeyboardInterrupt):
                raise
            except Exception as e:
                # A fault of this script, not of Ramify: recorded, and the run goes on.
                self.count(self.ops, op + " (soak script error)")
                self.op_errors.append({"step": self.step, "op": op, "error": traceback.format_exc()})
                result = f"soak script error: {e!r}"
            secs = time.time() - t0
            self.log(event="op_done", op=op, result=result, secs=round(secs, 3))
            c0 = time.time()
            self.check_all()
            print(f"[{time.strftime('%H:%M:%S')}] step {self.step:3d} {op:16s} {secs:6.1f}s  "
                  f"{result[:70]:70s} checked {len(self.branches)} branches in {time.time() - c0:4.1f}s  "
                  f"tx {sum(a for a, _ in self.tx.values())} violations {len(self.violations)}", flush=True)
        self.step += 1
        self.stop.set()
        for t in self.workers:
            t.join(timeout=30)
        self.log(event="final_check")
        self.check_all()

    def daemon_alive(self):
        pid = self.daemon_pid()
        return pid is not None and os.path.exists(f"/proc/{pid}")

    def report(self):
        print()
        print(f"soak seed {self.seed}: {self.step} steps, {self.daemon_kills} daemon SIGKILLs, "
              f"transfers acknowledged {sum(a for a, _ in self.tx.values())}, "
              f"in doubt {sum(d for _, d in self.tx.values())}")
        print()
        print(f"{'operation':32s} {'done':>6s}")
        for k in sorted(k for k in self.ops if not k.startswith("_")):
            print(f"{k:32s} {self.ops[k]:6d}")
        print()
        print(f"{'invariant':32s} {'checked':>8s}")
        for k in sorted(self.checks):
            print(f"{k:32s} {self.checks[k]:8d}")
        print()
        if self.op_errors:
            print(f"operations refused or failed: {len(self.op_errors)}")
            for e in self.op_errors[:30]:
                print(f"  step {e['step']} {e['op']}: {e['error'][:300]}")
            print()
        print(f"violations: {len(self.violations)}")
        for v in self.violations:
            print(f"  seed {v['seed']} step {v['step']} at {v['time']} branch {v['branch']}: {v['what']}")
            print(f"    {json.dumps(v['detail'], default=str)[:1500]}")
        with open(os.path.join(self.out, "violations.json"), "w") as f:
            json.dump(self.violations, f, indent=1, default=str)
        print(f"\noperation log: {self.out}/ops.jsonl; replay with SOAK_SEED={self.seed}")

    def cleanup(self):
        self.stop.set()
        try:
            shutil.copy(os.path.join(self.data, "local", "daemon.log"), os.path.join(self.out, "daemon.log"))
        except OSError:
            pass
        if os.environ.get("SOAK_KEEP") == "1":
            print(f"kept {self.work} (stop it with RAMIFY_DATA_DIR={self.data} {self.ramify} local down)")
            return
        subprocess.run([self.ramify, "local", "down"], env=self.env, capture_output=True)
        # Postgres processes of this data directory that `local down` did not stop (a
        # crash can leave some that no daemon knows of): stopped by pid, and reported.
        for line in subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()[1:]:
            pid, _, args = line.strip().partition(" ")
            if args.startswith(os.path.join(PGBIN, "postgres") + " -D " + self.data):
                print(f"left running after `local down`, killed: {line.strip()}")
                self.violation("-", "Postgres left running after `ramify local down`", line.strip())
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        time.sleep(0.5)
        if os.path.ismount(self.data):
            subprocess.run(["umount", "-l", self.data])
        shutil.rmtree(self.work, ignore_errors=True)


class CliError(Exception):
    def __init__(self, args, rc, msg):
        super().__init__(f"ramify {' '.join(args)}: exit {rc}: {msg}")


class Retry(Exception):
    pass


class Abort(Exception):
    pass


def main():
    ramify = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/debug/ramify")
    if os.geteuid() != 0:
        sys.exit("error: the soak runs local mode on a loop-mounted XFS image, which needs root; run it as root")
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1, 2**31))
    minutes = float(os.environ.get("SOAK_MINUTES") or "10")
    out = os.environ.get("SOAK_OUT") or os.path.join(
        "target", "soak", f"{seed}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}")
    os.makedirs(out, exist_ok=True)
    # Also when started in the background, where the shell ignores SIGINT: both signals
    # stop the run through its clean-up and report.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    s = Soak(ramify, seed, minutes, out)
    aborted = None
    try:
        s.run()
    except Abort as e:
        aborted = str(e)
    except KeyboardInterrupt:
        aborted = "interrupted"
    except Exception:
        aborted = traceback.format_exc()
    finally:
        s.cleanup()
    s.report()
    if aborted:
        print(f"\nthe soak stopped early: {aborted}")
    sys.exit(1 if s.violations or aborted else 0)


if __name__ == "__main__":
    main()
