//! Schema and data diff of two Postgres databases — the engine behind `ramify diff A [B]`.
//!
//! * [`extract_schema`] reads a normalised [`SchemaModel`] from a live database with a
//!   fixed dozen catalog queries (pipelined, one read-only transaction), whatever the
//!   number of objects: schemas, extensions, types, sequences, tables with their
//!   columns, constraints, indexes, views, functions, triggers, policies and grants.
//!   Every object renders as normalised DDL ([`SchemaModel::objects`]); two identical
//!   databases give identical text whatever their OIDs or creation order.
//! * [`diff_schemas`] compares two models object by object into a [`SchemaDiff`]: a
//!   unified diff grouped by object ([`SchemaDiff::render`]) or a JSON list of
//!   `{kind, name, change, before, after}` (serde).
//! * [`diff_data`] compares the rows of the tables both sides have: by primary key with
//!   a streamed merge join of row hashes (bounded memory), row counts otherwise.
//! * [`diff_databases`] does all of it for two connected clients and returns a
//!   [`DiffReport`] (`is_empty` for `--exit-code`, `render` for text, `to_json` for
//!   `-o json`).
//!
//! Side A is the "before" side (`-` lines, `removed`, `only_in_a`), side B the "after"
//! side (`+`, `added`, `only_in_b`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod connect;
pub mod data;
pub mod error;
pub mod extract;
pub mod model;
pub mod schema_diff;
pub mod textdiff;

use serde::Serialize;
use tokio_postgres::Client;

pub use connect::connect;
pub use data::{diff_data, DataDiff, DataDiffOptions, KeyedCounts, TableData, TableDataResult};
pub use error::DiffError;
pub use extract::extract_schema;
pub use model::{DbObject, ObjectKind, SchemaModel};
pub use schema_diff::{
    diff_schemas, Change, ColumnChanges, DiffSummary, ObjectChange, RenderOptions, SchemaDiff,
};

/// What [`diff_databases`] compares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Also compare rows (`--data`).
    pub data: Option<DataDiffOptions>,
}

/// The result of [`diff_databases`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffReport {
    /// Schema differences.
    pub schema: SchemaDiff,
    /// Data differences, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataDiff>,
}

impl DiffReport {
    /// True when nothing differs (`--exit-code` exits 0).
    pub fn is_empty(&self) -> bool {
        self.schema.is_empty() && self.data.as_ref().is_none_or(DataDiff::is_empty)
    }

    /// The schema's unified diff (empty when identical), then the data section when
    /// data was compared.
    pub fn render(&self, opts: &RenderOptions) -> String {
        let mut out = self.schema.render(opts);
        if let Some(d) = &self.data {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&d.render(opts));
        }
        out
    }

    /// `{"a": label, "b": label, "identical": bool, "summary": {...}, "schema": [...],
    /// "data": [...]}` (`data` only when compared).
    pub fn to_json(&self, opts: &RenderOptions) -> serde_json::Value {
        let mut v = serde_json::json!({
            "a": opts.a_label,
            "b": opts.b_label,
            "identical": self.is_empty(),
            "summary": self.schema.summary(),
            "schema": self.schema,
        });
        if let Some(d) = &self.data {
            v["data"] = serde_json::to_value(d).unwrap_or_default();
        }
        v
    }
}

/// Extracts both schemas concurrently, diffs them and, when asked, compares the data.
pub async fn diff_databases(
    a: &mut Client,
    b: &mut Client,
    opts: &DiffOptions,
) -> Result<DiffReport, DiffError> {
    let (ma, mb) = tokio::try_join!(extract_schema(a), extract_schema(b))?;
    let schema = diff_schemas(&ma, &mb);
    let data = match &opts.data {
        Some(o) => Some(diff_data(a, b, o).await?),
        None => None,
    };
    Ok(DiffReport { schema, data })
}
