//! Row-level comparison of the tables two databases share.
//!
//! For a table with the same primary key on both sides, each side streams
//! `(key, md5 of the row's text)` ordered by key from a server-side cursor (a
//! protocol-level portal executed [`DataDiffOptions::batch_rows`] rows at a time, each
//! batch streamed as it arrives), and a merge join over the two sorted streams counts
//! rows only in A, only in B and changed. Nothing is collected: the driver stops
//! reading a socket while a row waits to be merged, so memory stays bounded whatever
//! the table size, and the two servers produce rows concurrently with the merge. The
//! server sorts (or walks the primary key index) on its side.
//!
//! * Integer keys (`smallint`, `integer`, `bigint`, alone or composite) are ordered by
//!   the key itself, so Postgres walks the primary key index.
//! * Any other key is compared through its text form ordered `COLLATE "C"`, which is the
//!   byte order Rust compares strings in. Both sides use the same session settings
//!   (`TimeZone`, `DateStyle`, `extra_float_digits`, …), so equal values print the
//!   same; the stream order is checked as it is read and a mismatch is an error, never
//!   a wrong count.
//! * Rows are hashed on the columns both sides have (by name, in A's order); when the
//!   column sets differ the result says so in `notes`.
//! * A table without a primary key (or with different keys on the two sides) gets row
//!   counts only. Tables of one side only are listed with their row count.
//!
//! Each side runs in one `REPEATABLE READ READ ONLY` transaction, so all tables are
//! compared at one snapshot per side.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;

use futures::StreamExt;

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, IsolationLevel, Portal, Row, RowStream, Transaction};

use crate::error::DiffError;
use crate::schema_diff::RenderOptions;

/// Tuning of [`diff_data`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDiffOptions {
    /// Rows requested from each side's cursor per round trip (each batch is streamed,
    /// not collected, so memory does not grow with it).
    pub batch_rows: usize,
}

impl Default for DataDiffOptions {
    fn default() -> Self {
        Self { batch_rows: 10_000 }
    }
}

/// Counts for a table compared row by row on its primary key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedCounts {
    /// The primary key columns (quoted).
    pub key: Vec<String>,
    /// Rows in A.
    pub rows_a: u64,
    /// Rows in B.
    pub rows_b: u64,
    /// Keys only in A.
    pub only_in_a: u64,
    /// Keys only in B.
    pub only_in_b: u64,
    /// Keys in both whose rows differ.
    pub changed: u64,
    /// Caveats (columns compared when the column sets differ).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What was found for one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "comparison", rename_all = "snake_case")]
pub enum TableDataResult {
    /// Compared row by row on the primary key.
    ByKey(KeyedCounts),
    /// No usable primary key: row counts only.
    RowCounts {
        /// Rows in A.
        rows_a: u64,
        /// Rows in B.
        rows_b: u64,
        /// Why rows were not compared by key.
        reason: String,
    },
    /// The table exists in A only.
    OnlyInA {
        /// Rows in A.
        rows_a: u64,
    },
    /// The table exists in B only.
    OnlyInB {
        /// Rows in B.
        rows_b: u64,
    },
}

/// The data comparison of one table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableData {
    /// Quoted, qualified table name.
    pub table: String,
    /// What was found.
    #[serde(flatten)]
    pub result: TableDataResult,
}

impl TableData {
    /// True when a difference was found (for row counts: the counts differ; rows of a
    /// table without a key are not compared).
    pub fn differs(&self) -> bool {
        match &self.result {
            TableDataResult::ByKey(k) => k.only_in_a + k.only_in_b + k.changed > 0,
            TableDataResult::RowCounts { rows_a, rows_b, .. } => rows_a != rows_b,
            TableDataResult::OnlyInA { .. } | TableDataResult::OnlyInB { .. } => true,
        }
    }
}

/// The data comparison of every ordinary table (partitions are compared one by one,
/// partitioned parents are not, and `ONLY` is used so inheritance children are not
/// counted twice). Serialises as a JSON list of [`TableData`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DataDiff {
    /// Every table, sorted by name.
    pub tables: Vec<TableData>,
}

impl DataDiff {
    /// True when no table differs.
    pub fn is_empty(&self) -> bool {
        !self.tables.iter().any(TableData::differs)
    }

    /// The result for `table` (quoted, qualified).
    pub fn table(&self, table: &str) -> Option<&TableData> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// One line per differing table plus a summary line:
    ///
    /// ```text
    /// ## data
    /// public.orders (key id): 7 only in main, 13 only in feature, 11 changed; 1000 → 1006 rows
    /// public.log (no primary key): 10 → 12 rows
    /// public.tmp: only in main (5 rows)
    /// 42 tables compared, 3 differ
    /// ```
    pub fn render(&self, opts: &RenderOptions) -> String {
        let (a, b) = (&opts.a_label, &opts.b_label);
        let mut out = String::new();
        let bold = |s: &str| {
            if opts.color {
                format!("\x1b[1m{s}\x1b[0m")
            } else {
                s.to_owned()
            }
        };
        let _ = writeln!(out, "{}", bold("## data"));
        let mut differ = 0;
        for t in &self.tables {
            if !t.differs() {
                continue;
            }
            differ += 1;
            match &t.result {
                TableDataResult::ByKey(k) => {
                    let _ = write!(
                        out,
                        "{} (key {}): {} only in {a}, {} only in {b}, {} changed; {} → {} rows",
                        t.table,
                        k.key.join(", "),
                        k.only_in_a,
                        k.only_in_b,
                        k.changed,
                        k.rows_a,
                        k.rows_b
                    );
                    for n in &k.notes {
                        let _ = write!(out, " ({n})");
                    }
                    out.push('\n');
                }
                TableDataResult::RowCounts {
                    rows_a,
                    rows_b,
                    reason,
                } => {
                    let _ = writeln!(out, "{} ({reason}): {rows_a} → {rows_b} rows", t.table);
                }
                TableDataResult::OnlyInA { rows_a } => {
                    let _ = writeln!(out, "{}: only in {a} ({rows_a} rows)", t.table);
                }
                TableDataResult::OnlyInB { rows_b } => {
                    let _ = writeln!(out, "{}: only in {b} ({rows_b} rows)", t.table);
                }
            }
        }
        let _ = writeln!(
            out,
            "{} table{} compared, {differ} differ{}",
            self.tables.len(),
            if self.tables.len() == 1 { "" } else { "s" },
            if differ == 1 { "s" } else { "" }
        );
        out
    }
}

/// What one side knows about a table.
#[derive(Debug, Clone)]
struct TableInfo {
    columns: Vec<(String, String)>,
    key: Option<Vec<(String, String)>>,
}

const SESSION: &str = "SET LOCAL search_path = pg_catalog; SET LOCAL TimeZone = 'UTC'; \
    SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
    SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; \
    SET LOCAL lc_monetary = 'C'";

const Q_TABLES: &str = "SELECT format('%I.%I', n.nspname, c.relname) AS name, \
       ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum) AS cols, \
       ARRAY(SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum) AS col_types, \
       (SELECT ARRAY(SELECT quote_ident(a.attname) \
          FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord) \
        FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk, \
       (SELECT ARRAY(SELECT format_type(a.atttypid, NULL) \
          FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
          JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord) \
        FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) AS pk_types \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema' \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
         AND d.objid = c.oid AND d.deptype = 'e')";

async fn snapshot(client: &mut Client) -> Result<Transaction<'_>, DiffError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DiffError::query("begin the data transaction"))?;
    tx.batch_execute(SESSION)
        .await
        .map_err(DiffError::query("set the session for the data diff"))?;
    Ok(tx)
}

async fn read_tables(tx: &Transaction<'_>) -> Result<BTreeMap<String, TableInfo>, DiffError> {
    let rows = tx
        .query(Q_TABLES, &[])
        .await
        .map_err(DiffError::query("list tables"))?;
    let mut out = BTreeMap::new();
    for r in rows {
        let dec = |source| DiffError::Decode {
            column: "tables",
            source,
        };
        let name: String = r.try_get("name").map_err(dec)?;
        let cols: Vec<String> = r.try_get("cols").map_err(dec)?;
        let types: Vec<String> = r.try_get("col_types").map_err(dec)?;
        let pk: Option<Vec<String>> = r.try_get("pk").map_err(dec)?;
        let pk_types: Option<Vec<String>> = r.try_get("pk_types").map_err(dec)?;
        let key = match (pk, pk_types) {
            (Some(k), Some(t)) if !k.is_empty() => Some(k.into_iter().zip(t).collect()),
            _ => None,
        };
        out.insert(
            name,
            TableInfo {
                columns: cols.into_iter().zip(types).collect(),
                key,
            },
        );
    }
    Ok(out)
}

async fn count_rows(tx: &Transaction<'_>, table: &str) -> Result<u64, DiffError> {
    let row = tx
        .query_one(&format!("SELECT count(*) FROM ONLY {table}"), &[])
        .await
        .map_err(DiffError::query(format!("count the rows of {table}")))?;
    let n: i64 = row.try_get(0).map_err(|source| DiffError::Decode {
        column: "count",
        source,
    })?;
    Ok(n.max(0) as u64)
}

/// Compares the rows of every table of `a` and `b` (see the module documentation).
/// Each client runs one read-only transaction (so neither may be inside one already);
/// both are usable afterwards.
pub async fn diff_data(
    a: &mut Client,
    b: &mut Client,
    opts: &DataDiffOptions,
) -> Result<DataDiff, DiffError> {
    let (ta, tb) = tokio::try_join!(snapshot(a), snapshot(b))?;
    let (tables_a, tables_b) = tokio::try_join!(read_tables(&ta), read_tables(&tb))?;
    let mut names: Vec<&String> = tables_a.keys().chain(tables_b.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = DataDiff::default();
    for name in names {
        let result = match (tables_a.get(name), tables_b.get(name)) {
            (Some(ia), Some(ib)) => compare_table(&ta, &tb, name, ia, ib, opts).await?,
            (Some(_), None) => TableDataResult::OnlyInA {
                rows_a: count_rows(&ta, name).await?,
            },
            (None, Some(_)) => TableDataResult::OnlyInB {
                rows_b: count_rows(&tb, name).await?,
            },
            (None, None) => continue,
        };
        out.tables.push(TableData {
            table: name.clone(),
            result,
        });
    }
    tokio::try_join!(ta.commit(), tb.commit())
        .map_err(DiffError::query("end the data transaction"))?;
    Ok(out)
}

const INT_TYPES: [&str; 3] = ["smallint", "integer", "bigint"];

async fn compare_table(
    ta: &Transaction<'_>,
    tb: &Transaction<'_>,
    table: &str,
    ia: &TableInfo,
    ib: &TableInfo,
    opts: &DataDiffOptions,
) -> Result<TableDataResult, DiffError> {
    let (key_a, key_b) = match (&ia.key, &ib.key) {
        (Some(ka), Some(kb)) => (ka, kb),
        (ka, kb) => {
            let reason = match (ka, kb) {
                (None, None) => "no primary key".to_owned(),
                (None, _) => "no primary key in A".to_owned(),
                _ => "no primary key in B".to_owned(),
            };
            let (rows_a, rows_b) = tokio::try_join!(count_rows(ta, table), count_rows(tb, table))?;
            return Ok(TableDataResult::RowCounts {
                rows_a,
                rows_b,
                reason,
            });
        }
    };
    if key_a != key_b {
        let fmt = |k: &Vec<(String, String)>| {
            k.iter()
                .map(|(n, t)| format!("{n} {t}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (rows_a, rows_b) = tokio::try_join!(count_rows(ta, table), count_rows(tb, table))?;
        return Ok(TableDataResult::RowCounts {
            rows_a,
            rows_b,
            reason: format!("primary keys differ: ({}) vs ({})", fmt(key_a), fmt(key_b)),
        });
    }

    // Columns hashed: those both sides have, in A's order.
    let common: Vec<&str> = ia
        .columns
        .iter()
        .filter(|(n, _)| ib.columns.iter().any(|(m, _)| m == n))
        .map(|(n, _)| n.as_str())
        .collect();
    let mut notes = Vec::new();
    let only_a: Vec<&str> = ia
        .columns
        .iter()
        .filter(|(n, _)| !common.contains(&n.as_str()))
        .map(|(n, _)| n.as_str())
        .collect();
    let only_b: Vec<&str> = ib
        .columns
        .iter()
        .filter(|(n, _)| !common.contains(&n.as_str()))
        .map(|(n, _)| n.as_str())
        .collect();
    if !only_a.is_empty() || !only_b.is_empty() {
        let mut n = format!("rows compared on the {} common columns", common.len());
        if !only_a.is_empty() {
            let _ = write!(n, "; only in A: {}", only_a.join(", "));
        }
        if !only_b.is_empty() {
            let _ = write!(n, "; only in B: {}", only_b.join(", "));
        }
        notes.push(n);
    }
    let retyped: Vec<&str> = ia
        .columns
        .iter()
        .filter(|(n, t)| ib.columns.iter().any(|(m, u)| m == n && u != t))
        .map(|(n, _)| n.as_str())
        .collect();
    if !retyped.is_empty() {
        notes.push(format!(
            "column types differ: {} (compared as text)",
            retyped.join(", ")
        ));
    }

    let int_keys = key_a.iter().all(|(_, t)| INT_TYPES.contains(&t.as_str()));
    let key_names: Vec<&str> = key_a.iter().map(|(n, _)| n.as_str()).collect();
    // Key columns are left out of the hash: equal keys already mean equal key values.
    let hashed: Vec<&str> = common
        .iter()
        .copied()
        .filter(|c| !key_names.contains(c))
        .collect();
    let row_hash = format!("decode(md5(ROW({})::text), 'hex')", hashed.join(", "));
    let sql = if int_keys {
        let keys: Vec<String> = key_names.iter().map(|k| format!("{k}::int8")).collect();
        format!(
            "SELECT {}, {row_hash} FROM ONLY {table} ORDER BY {}",
            keys.join(", "),
            key_names.join(", ")
        )
    } else {
        let key_text = if key_names.len() == 1 {
            format!("{}::text", key_names[0])
        } else {
            format!("ROW({})::text", key_names.join(", "))
        };
        format!("SELECT ({key_text}) COLLATE \"C\" AS k, {row_hash} FROM ONLY {table} ORDER BY 1")
    };
    let nkeys = if int_keys { key_names.len() } else { 1 };
    let batch = opts.batch_rows.clamp(1, i32::MAX as usize);

    let (mut sa, mut sb) = tokio::try_join!(
        Side::open(ta, &sql, table, "A", int_keys, nkeys, batch),
        Side::open(tb, &sql, table, "B", int_keys, nkeys, batch),
    )?;
    let mut counts = KeyedCounts {
        key: key_names.iter().map(|s| (*s).to_owned()).collect(),
        notes,
        ..Default::default()
    };
    let (mut ha, mut hb) = tokio::try_join!(sa.next(), sb.next())?;
    loop {
        let ord = match (&ha, &hb) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.0.cmp(&y.0),
        };
        match ord {
            Ordering::Less => {
                counts.only_in_a += 1;
                ha = sa.next().await?;
            }
            Ordering::Greater => {
                counts.only_in_b += 1;
                hb = sb.next().await?;
            }
            Ordering::Equal => {
                if ha.as_ref().map(|x| &x.1) != hb.as_ref().map(|y| &y.1) {
                    counts.changed += 1;
                }
                (ha, hb) = tokio::try_join!(sa.next(), sb.next())?;
            }
        }
    }
    counts.rows_a = sa.rows;
    counts.rows_b = sb.rows;
    Ok(TableDataResult::ByKey(counts))
}

/// A primary key value as compared by the merge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Ints(Vec<i64>),
    Text(String),
}

/// One side of the merge: a portal (server-side cursor) executed `batch` rows at a
/// time, each batch streamed as it arrives. The driver applies backpressure (it stops
/// reading the socket while a row waits to be consumed), so memory stays bounded while
/// both servers keep producing rows concurrently with the merge.
struct Side<'t, 'c> {
    tx: &'t Transaction<'c>,
    portal: Portal,
    stream: Option<Pin<Box<RowStream>>>,
    table: String,
    name: &'static str,
    int_keys: bool,
    nkeys: usize,
    batch: usize,
    in_batch: usize,
    done: bool,
    last: Option<Key>,
    rows: u64,
}

impl<'t, 'c> Side<'t, 'c> {
    async fn open(
        tx: &'t Transaction<'c>,
        sql: &str,
        table: &str,
        name: &'static str,
        int_keys: bool,
        nkeys: usize,
        batch: usize,
    ) -> Result<Self, DiffError> {
        let what = || format!("read the rows of {table} in {name}");
        let stmt = tx.prepare(sql).await.map_err(DiffError::query(what()))?;
        let portal = tx
            .bind(&stmt, &[])
            .await
            .map_err(DiffError::query(what()))?;
        Ok(Self {
            tx,
            portal,
            stream: None,
            table: table.to_owned(),
            name,
            int_keys,
            nkeys,
            batch,
            in_batch: 0,
            done: false,
            last: None,
            rows: 0,
        })
    }

    fn what(&self) -> String {
        format!("read the rows of {} in {}", self.table, self.name)
    }

    /// The next `(key, row hash)` in key order, `None` at the end.
    async fn next(&mut self) -> Result<Option<(Key, Vec<u8>)>, DiffError> {
        loop {
            if self.done {
                return Ok(None);
            }
            let stream = match &mut self.stream {
                Some(s) => s,
                None => {
                    let s = self
                        .tx
                        .query_portal_raw(&self.portal, self.batch as i32)
                        .await
                        .map_err(DiffError::query(self.what()))?;
                    self.in_batch = 0;
                    self.stream.insert(Box::pin(s))
                }
            };
            match stream.next().await {
                Some(row) => {
                    let row = row.map_err(DiffError::query(self.what()))?;
                    self.in_batch += 1;
                    let entry = self.decode(&row)?;
                    if self.last.as_ref().is_some_and(|l| *l >= entry.0) {
                        return Err(DiffError::Order {
                            table: self.table.clone(),
                            side: self.name,
                        });
                    }
                    self.last = Some(entry.0.clone());
                    self.rows += 1;
                    return Ok(Some(entry));
                }
                None => {
                    self.stream = None;
                    // A short batch means the portal is exhausted.
                    self.done = self.in_batch < self.batch;
                }
            }
        }
    }

    fn decode(&self, r: &Row) -> Result<(Key, Vec<u8>), DiffError> {
        let dec = |source| DiffError::Decode {
            column: "row key or hash",
            source,
        };
        let key = if self.int_keys {
            let mut v = Vec::with_capacity(self.nkeys);
            for i in 0..self.nkeys {
                v.push(r.try_get::<_, i64>(i).map_err(dec)?);
            }
            Key::Ints(v)
        } else {
            Key::Text(r.try_get::<_, String>(0).map_err(dec)?)
        };
        let hash: Vec<u8> = r.try_get(self.nkeys).map_err(dec)?;
        Ok((key, hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_like_postgres() {
        assert!(Key::Ints(vec![1, 9]) < Key::Ints(vec![2, 0]));
        assert!(Key::Ints(vec![-5]) < Key::Ints(vec![3]));
        // COLLATE "C" is byte order.
        assert!(Key::Text("B".into()) < Key::Text("a".into()));
        assert!(Key::Text("ab".into()) < Key::Text("b".into()));
    }

    #[test]
    fn render_and_emptiness() {
        let d = DataDiff {
            tables: vec![
                TableData {
                    table: "public.log".into(),
                    result: TableDataResult::RowCounts {
                        rows_a: 10,
                        rows_b: 12,
                        reason: "no primary key".into(),
                    },
                },
                TableData {
                    table: "public.orders".into(),
                    result: TableDataResult::ByKey(KeyedCounts {
                        key: vec!["id".into()],
                        rows_a: 1000,
                        rows_b: 1006,
                        only_in_a: 7,
                        only_in_b: 13,
                        changed: 11,
                        notes: vec![],
                    }),
                },
                TableData {
                    table: "public.same".into(),
                    result: TableDataResult::ByKey(KeyedCounts {
                        key: vec!["id".into()],
                        rows_a: 5,
                        rows_b: 5,
                        ..Default::default()
                    }),
                },
                TableData {
                    table: "public.tmp".into(),
                    result: TableDataResult::OnlyInA { rows_a: 5 },
                },
            ],
        };
        assert!(!d.is_empty());
        let text = d.render(&RenderOptions {
            a_label: "main".into(),
            b_label: "feature".into(),
            ..Default::default()
        });
        assert_eq!(
            text,
            "## data\n\
             public.log (no primary key): 10 → 12 rows\n\
             public.orders (key id): 7 only in main, 13 only in feature, 11 changed; 1000 → 1006 rows\n\
             public.tmp: only in main (5 rows)\n\
             4 tables compared, 3 differ\n"
        );
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v[1]["table"], "public.orders");
        assert_eq!(v[1]["comparison"], "by_key");
        assert_eq!(v[1]["only_in_a"], 7);
        assert_eq!(v[0]["comparison"], "row_counts");
        assert_eq!(v[3]["comparison"], "only_in_a");
        let back: DataDiff = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);

        let same = DataDiff {
            tables: vec![d.tables[2].clone()],
        };
        assert!(same.is_empty());
    }
}
