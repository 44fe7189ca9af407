//! The normalised schema model: what [`crate::extract_schema`] reads from the catalogs,
//! grouped by object kind, and its rendering as DDL text.
//!
//! Every name in the model is already quoted and schema-qualified where SQL needs it
//! (`public."Order"`), every type is formatted by `format_type` with `search_path` set to
//! `pg_catalog` only, so user objects are always qualified and built-in ones never are.
//! Lists are sorted by name (byte order) after extraction; only orders that mean
//! something are kept from the catalogs (column positions, enum labels, inheritance
//! order). Nothing here depends on OIDs or on the order objects were created in.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The kinds of objects compared, in the order a diff lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// `CREATE SCHEMA`.
    Schema,
    /// `CREATE EXTENSION` (name, schema, version).
    Extension,
    /// Enum, domain, composite and range types.
    Type,
    /// Standalone and serial sequences (identity sequences belong to their column).
    Sequence,
    /// Tables (ordinary, partitioned, foreign), with their columns.
    Table,
    /// Table constraints: primary key, foreign key, unique, check, exclusion.
    Constraint,
    /// Indexes not backing a constraint.
    Index,
    /// Views and materialized views.
    View,
    /// Functions, procedures and aggregates.
    Function,
    /// Triggers.
    Trigger,
    /// Row-level security policies.
    Policy,
    /// Privileges differing from the defaults (tables, columns, sequences, schemas,
    /// functions, types).
    Grant,
}

impl ObjectKind {
    /// Every kind, in diff order.
    pub const ALL: [ObjectKind; 12] = [
        ObjectKind::Schema,
        ObjectKind::Extension,
        ObjectKind::Type,
        ObjectKind::Sequence,
        ObjectKind::Table,
        ObjectKind::Constraint,
        ObjectKind::Index,
        ObjectKind::View,
        ObjectKind::Function,
        ObjectKind::Trigger,
        ObjectKind::Policy,
        ObjectKind::Grant,
    ];

    /// The lower-case name used in headers and JSON (`table`, `index`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Schema => "schema",
            ObjectKind::Extension => "extension",
            ObjectKind::Type => "type",
            ObjectKind::Sequence => "sequence",
            ObjectKind::Table => "table",
            ObjectKind::Constraint => "constraint",
            ObjectKind::Index => "index",
            ObjectKind::View => "view",
            ObjectKind::Function => "function",
            ObjectKind::Trigger => "trigger",
            ObjectKind::Policy => "policy",
            ObjectKind::Grant => "grant",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object of a database: its kind, its qualified name and its normalised DDL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbObject {
    /// What it is.
    pub kind: ObjectKind,
    /// Its quoted, qualified name; table-scoped objects are `schema.table.name`,
    /// functions carry their argument types, grants are `TABLE public.t` and the like.
    pub name: String,
    /// Normalised DDL, ending in a newline.
    pub ddl: String,
}

/// The schema of one database, grouped by object kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaModel {
    /// Schemas outside `pg_catalog`, `information_schema`, `pg_toast*` and `pg_temp*`.
    pub schemas: Vec<Schema>,
    /// Installed extensions.
    pub extensions: Vec<Extension>,
    /// User-defined types.
    pub types: Vec<TypeDef>,
    /// Sequences (not identity sequences: those are shown on their column).
    pub sequences: Vec<Sequence>,
    /// Tables with their columns.
    pub tables: Vec<Table>,
    /// Table constraints.
    pub constraints: Vec<Constraint>,
    /// Indexes that do not back a primary key, unique or exclusion constraint.
    pub indexes: Vec<Index>,
    /// Views and materialized views.
    pub views: Vec<View>,
    /// Functions, procedures and aggregates.
    pub functions: Vec<Function>,
    /// Non-internal triggers.
    pub triggers: Vec<Trigger>,
    /// Row-level security policies.
    pub policies: Vec<Policy>,
    /// Per-object privileges that differ from the built-in defaults.
    pub grants: Vec<Grants>,
}

impl SchemaModel {
    /// Sorts every list by name so that output does not depend on catalog order.
    pub fn normalise(&mut self) {
        self.schemas.sort_by(|a, b| a.name.cmp(&b.name));
        self.extensions.sort_by(|a, b| a.name.cmp(&b.name));
        self.types.sort_by(|a, b| a.name.cmp(&b.name));
        self.sequences.sort_by(|a, b| a.name.cmp(&b.name));
        self.tables.sort_by(|a, b| a.name.cmp(&b.name));
        self.constraints
            .sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
        self.indexes.sort_by(|a, b| a.name.cmp(&b.name));
        self.views.sort_by(|a, b| a.name.cmp(&b.name));
        self.functions.sort_by(|a, b| a.name.cmp(&b.name));
        self.triggers
            .sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
        self.policies
            .sort_by(|a, b| (&a.table, &a.name).cmp(&(&b.table, &b.name)));
        self.grants
            .sort_by(|a, b| (&a.object_type, &a.object).cmp(&(&b.object_type, &b.object)));
        for t in &mut self.types {
            if let TypeBody::Domain { constraints, .. } = &mut t.body {
                constraints.sort();
            }
        }
        for g in &mut self.grants {
            g.statements.sort();
            g.statements.dedup();
        }
    }

    /// Every object with its DDL, sorted by kind then name.
    pub fn objects(&self) -> Vec<DbObject> {
        let mut out = Vec::new();
        let mut push = |kind, name: String, ddl: String| out.push(DbObject { kind, name, ddl });
        for s in &self.schemas {
            push(ObjectKind::Schema, s.name.clone(), s.ddl());
        }
        for e in &self.extensions {
            push(ObjectKind::Extension, e.name.clone(), e.ddl());
        }
        for t in &self.types {
            push(ObjectKind::Type, t.name.clone(), t.ddl());
        }
        for s in &self.sequences {
            push(ObjectKind::Sequence, s.name.clone(), s.ddl());
        }
        for t in &self.tables {
            push(ObjectKind::Table, t.name.clone(), t.ddl());
        }
        for c in &self.constraints {
            push(ObjectKind::Constraint, c.qualified_name(), c.ddl());
        }
        for i in &self.indexes {
            push(ObjectKind::Index, i.name.clone(), i.ddl());
        }
        for v in &self.views {
            push(ObjectKind::View, v.name.clone(), v.ddl());
        }
        for f in &self.functions {
            push(ObjectKind::Function, f.name.clone(), f.ddl());
        }
        for t in &self.triggers {
            push(ObjectKind::Trigger, t.qualified_name(), t.ddl());
        }
        for p in &self.policies {
            push(ObjectKind::Policy, p.qualified_name(), p.ddl());
        }
        for g in &self.grants {
            push(ObjectKind::Grant, g.qualified_name(), g.ddl());
        }
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        out
    }

    /// The whole schema as one DDL text (objects in [`SchemaModel::objects`] order,
    /// separated by blank lines): identical databases give identical text.
    pub fn to_ddl(&self) -> String {
        let mut out = String::new();
        for o in self.objects() {
            if !out.is_empty() {
                out.push('\n');
            }
            let _ = writeln!(out, "-- {} {}", o.kind, o.name);
            out.push_str(&o.ddl);
        }
        out
    }

    /// The table named `name` (quoted, qualified), if any.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// A schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// Quoted name.
    pub name: String,
    /// Quoted owner role.
    pub owner: String,
}

impl Schema {
    /// `CREATE SCHEMA` plus its owner.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE SCHEMA {0};\nALTER SCHEMA {0} OWNER TO {1};\n",
            self.name, self.owner
        )
    }
}

/// An installed extension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extension {
    /// Quoted name.
    pub name: String,
    /// Quoted schema it is installed in.
    pub schema: String,
    /// Installed version.
    pub version: String,
}

impl Extension {
    /// `CREATE EXTENSION … WITH SCHEMA … VERSION …`.
    pub fn ddl(&self) -> String {
        format!(
            "CREATE EXTENSION {} WITH SCHEMA {} VERSION {};\n",
            self.name,
            self.schema,
            quote_literal(&self.version)
        )
    }
}

/// A user-defined type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeDef {
    /// Quoted, qualified name.
    pub name: String,
    /// Quoted owner role.
    pub owner: String,
    /// What kind of type, with its definition.
    pub body: TypeBody,
}

/// The definition of a [`TypeDef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TypeBody {
    /// `CREATE TYPE … AS ENUM`.
    Enum {
        /// Labels in sort order, unquoted.
        labels: Vec<String>,
    },
    /// `CREATE DOMAIN`.
    Domain {
        /// The base type.
        base: String,
        /// A collation differing from the base type's.
        collation: Option<String>,
        /// The default expression.
        default: Option<String>,
        /// `NOT NULL`.
        not_null: bool,
        /// `(name, definition)` of each check constraint, sorted.
        constraints: Vec<(String, String)>,
    },
    /// `CREATE TYPE … AS (…)`.
    Composite {
        /// Attributes in order.
        attributes: Vec<Column>,
    },
    /// `CREATE TYPE … AS RANGE`.
    Range {
        /// `SUBTYPE = …`, `SUBTYPE_OPCLASS = …` and the other options, in order.
        options: Vec<String>,
    },
}

impl TypeDef {
    /// The type's DDL plus its owner.
    pub fn ddl(&self) -> String {
        let mut out = String::new();
        match &self.body {
            TypeBody::Enum { labels } => {
                let _ = write!(out, "CREATE TYPE {} AS ENUM (", self.name);
                write_list(
                    &mut out,
                    labels.iter().map(|l| quote_literal(l)).collect::<Vec<_>>(),
                );
                out.push_str(");\n");
            }
            TypeBody::Domain {
                base,
                collation,
                default,
                not_null,
                constraints,
            } => {
                let _ = write!(out, "CREATE DOMAIN {} AS {base}", self.name);
                if let Some(c) = collation {
                    let _ = write!(out, " COLLATE {c}");
                }
                if let Some(d) = default {
                    let _ = write!(out, " DEFAULT {d}");
                }
                if *not_null {
                    out.push_str(" NOT NULL");
                }
                for (name, def) in constraints {
                    let _ = write!(out, "\n    CONSTRAINT {name} {def}");
                }
                out.push_str(";\n");
            }
            TypeBody::Composite { attributes } => {
                let _ = write!(out, "CREATE TYPE {} AS (", self.name);
                write_list(
                    &mut out,
                    attributes.iter().map(Column::ddl).collect::<Vec<_>>(),
                );
                out.push_str(");\n");
            }
            TypeBody::Range { options } => {
                let _ = write!(out, "CREATE TYPE {} AS RANGE (", self.name);
                write_list(&mut out, options.clone());
                out.push_str(");\n");
            }
        }
        let what = if matches!(self.body, TypeBody::Domain { .. }) {
            "DOMAIN"
        } else {
            "TYPE"
        };
        let _ = writeln!(out, "ALTER {what} {} OWNER TO {};", self.name, self.owner);
        out
    }
}

/// Sequence parameters (also used for identity columns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceOptions {
    /// `AS` type.
    pub data_type: String,
    /// `START WITH`.
    pub start: i64,
    /// `INCREMENT BY`.
    pub increment: i64,
    /// `MINVALUE`.
    pub min: i64,
    /// `MAXVALUE`.
    pub max: i64,
    /// `CACHE`.
    pub cache: i64,
    /// `CYCLE`.
    pub cycle: bool,
}

impl SequenceOptions {
    fn lines(&self) -> Vec<String> {
        let mut v = vec![
            format!("START WITH {}", self.start),
            format!("INCREMENT BY {}", self.increment),
            format!("MINVALUE {}", self.min),
            format!("MAXVALUE {}", self.max),
            format!("CACHE {}", self.cache),
        ];
        if self.cycle {
            v.push("CYCLE".to_owned());
        }
        v
    }
}

/// A sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    /// Quoted, qualified name.
    pub name: String,
    /// Quoted owner role.
    pub owner: String,
    /// Its parameters.
    pub options: SequenceOptions,
    /// `OWNED BY schema.table.column` (serial columns).
    pub owned_by: Option<String>,
}

impl Sequence {
    /// `CREATE SEQUENCE` with every parameter, `OWNED BY` and the owner.
    pub fn ddl(&self) -> String {
        let mut out = format!(
            "CREATE SEQUENCE {}\n    AS {}",
            self.name, self.options.data_type
        );
        for l in self.options.lines() {
            let _ = write!(out, "\n    {l}");
        }
        out.push_str(";\n");
        if let Some(o) = &self.owned_by {
            let _ = writeln!(out, "ALTER SEQUENCE {} OWNED BY {o};", self.name);
        }
        let _ = writeln!(out, "ALTER SEQUENCE {} OWNER TO {};", self.name, self.owner);
        out
    }
}

/// What kind of table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TableKind {
    /// An ordinary table (a partition too).
    Ordinary,
    /// A partitioned table.
    Partitioned,
    /// A foreign table.
    Foreign,
}

/// An identity column's specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// `ALWAYS` (else `BY DEFAULT`).
    pub always: bool,
    /// The identity sequence's quoted, qualified name.
    pub sequence: Option<String>,
    /// Its parameters, when found.
    pub options: Option<SequenceOptions>,
}

/// A column of a table or an attribute of a composite type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Quoted name.
    pub name: String,
    /// Formatted type with modifiers (`character varying(20)`).
    pub data_type: String,
    /// A collation differing from the type's default (quoted, qualified).
    pub collation: Option<String>,
    /// `NOT NULL`.
    pub not_null: bool,
    /// `DEFAULT` expression (not for generated columns).
    pub default: Option<String>,
    /// `GENERATED … AS IDENTITY`.
    pub identity: Option<Identity>,
    /// `GENERATED ALWAYS AS (expr) STORED`: the expression.
    pub generated: Option<String>,
}

impl Column {
    /// The column's line in `CREATE TABLE`, without indentation or comma.
    pub fn ddl(&self) -> String {
        let mut out = format!("{} {}", self.name, self.data_type);
        if let Some(c) = &self.collation {
            let _ = write!(out, " COLLATE {c}");
        }
        if let Some(g) = &self.generated {
            let _ = write!(out, " GENERATED ALWAYS AS ({g}) STORED");
        } else if let Some(d) = &self.default {
            let _ = write!(out, " DEFAULT {d}");
        }
        if let Some(id) = &self.identity {
            let _ = write!(
                out,
                " GENERATED {} AS IDENTITY",
                if id.always { "ALWAYS" } else { "BY DEFAULT" }
            );
            let mut opts = Vec::new();
            if let Some(s) = &id.sequence {
                opts.push(format!("SEQUENCE NAME {s}"));
            }
            if let Some(o) = &id.options {
                opts.extend(o.lines());
            }
            if !opts.is_empty() {
                let _ = write!(out, " ({})", opts.join(" "));
            }
        }
        if self.not_null {
            out.push_str(" NOT NULL");
        }
        out
    }
}

/// A partition's parent and bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOf {
    /// The partitioned table.
    pub parent: String,
    /// `FOR VALUES …` / `DEFAULT`.
    pub bound: String,
}

/// A table (ordinary, partitioned or foreign).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// Quoted, qualified name.
    pub name: String,
    /// Quoted owner role.
    pub owner: String,
    /// Ordinary, partitioned or foreign.
    pub kind: TableKind,
    /// `UNLOGGED`.
    pub unlogged: bool,
    /// Columns in position order.
    pub columns: Vec<Column>,
    /// `PARTITION BY …` of a partitioned table.
    pub partition_key: Option<String>,
    /// For a partition: its parent and bound.
    pub partition_of: Option<PartitionOf>,
    /// `INHERITS (…)` parents, in order (not for partitions).
    pub inherits: Vec<String>,
    /// `USING` table access method when not `heap`.
    pub access_method: Option<String>,
    /// `WITH (…)` storage parameters, sorted.
    pub options: Vec<String>,
    /// `ENABLE ROW LEVEL SECURITY`.
    pub row_security: bool,
    /// `FORCE ROW LEVEL SECURITY`.
    pub force_row_security: bool,
    /// A foreign table's server.
    pub foreign_server: Option<String>,
    /// A foreign table's options, sorted.
    pub foreign_options: Vec<String>,
}

impl Table {
    /// `CREATE TABLE` with columns, then partition attachment, RLS and owner.
    pub fn ddl(&self) -> String {
        let mut out = String::from("CREATE ");
        if self.unlogged {
            out.push_str("UNLOGGED ");
        }
        if self.kind == TableKind::Foreign {
            out.push_str("FOREIGN ");
        }
        let _ = write!(out, "TABLE {} (", self.name);
        write_list(
            &mut out,
            self.columns.iter().map(Column::ddl).collect::<Vec<_>>(),
        );
        out.push(')');
        if !self.inherits.is_empty() {
            let _ = write!(out, "\nINHERITS ({})", self.inherits.join(", "));
        }
        if let Some(k) = &self.partition_key {
            let _ = write!(out, "\nPARTITION BY {k}");
        }
        if let Some(am) = &self.access_method {
            let _ = write!(out, "\nUSING {am}");
        }
        if !self.options.is_empty() {
            let _ = write!(out, "\nWITH ({})", self.options.join(", "));
        }
        if let Some(s) = &self.foreign_server {
            let _ = write!(out, "\nSERVER {s}");
            if !self.foreign_options.is_empty() {
                let _ = write!(out, "\nOPTIONS ({})", self.foreign_options.join(", "));
            }
        }
        out.push_str(";\n");
        if let Some(p) = &self.partition_of {
            let _ = writeln!(
                out,
                "ALTER TABLE {} ATTACH PARTITION {} {};",
                p.parent, self.name, p.bound
            );
        }
        if self.row_security {
            let _ = writeln!(out, "ALTER TABLE {} ENABLE ROW LEVEL SECURITY;", self.name);
        }
        if self.force_row_security {
            let _ = writeln!(out, "ALTER TABLE {} FORCE ROW LEVEL SECURITY;", self.name);
        }
        let what = if self.kind == TableKind::Foreign {
            "FOREIGN TABLE"
        } else {
            "TABLE"
        };
        let _ = writeln!(out, "ALTER {what} {} OWNER TO {};", self.name, self.owner);
        out
    }

    /// The column named `name` (quoted), if any.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// What kind of table constraint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintKind {
    /// `PRIMARY KEY`.
    PrimaryKey,
    /// `FOREIGN KEY`.
    ForeignKey,
    /// `UNIQUE`.
    Unique,
    /// `CHECK`.
    Check,
    /// `EXCLUDE`.
    Exclusion,
    /// Anything newer.
    Other,
}

impl ConstraintKind {
    /// From `pg_constraint.contype`.
    pub fn from_contype(c: &str) -> Self {
        match c {
            "p" => Self::PrimaryKey,
            "f" => Self::ForeignKey,
            "u" => Self::Unique,
            "c" => Self::Check,
            "x" => Self::Exclusion,
            _ => Self::Other,
        }
    }
}

/// A table constraint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// The table's quoted, qualified name.
    pub table: String,
    /// Quoted constraint name.
    pub name: String,
    /// What kind.
    pub kind: ConstraintKind,
    /// `pg_get_constraintdef` output.
    pub definition: String,
}

impl Constraint {
    /// `table.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    /// `ALTER TABLE … ADD CONSTRAINT …`.
    pub fn ddl(&self) -> String {
        format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {};\n",
            self.table, self.name, self.definition
        )
    }
}

/// An index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Quoted, qualified name.
    pub name: String,
    /// The indexed table or materialized view.
    pub table: String,
    /// `pg_get_indexdef` output.
    pub definition: String,
    /// `CLUSTER ON` this index.
    pub clustered: bool,
}

impl Index {
    /// `CREATE INDEX …` (and `CLUSTER ON`).
    pub fn ddl(&self) -> String {
        let mut out = format!("{};\n", self.definition);
        if self.clustered {
            let unqualified = self.name.rsplit_once('.').map_or(&*self.name, |(_, n)| n);
            let _ = writeln!(out, "ALTER TABLE {} CLUSTER ON {unqualified};", self.table);
        }
        out
    }
}

/// A view or materialized view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    /// Quoted, qualified name.
    pub name: String,
    /// Quoted owner role.
    pub owner: String,
    /// `MATERIALIZED`.
    pub materialized: bool,
    /// `WITH (…)` options, sorted.
    pub options: Vec<String>,
    /// `pg_get_viewdef(oid, true)`, without the final `;`.
    pub definition: String,
}

impl View {
    /// `CREATE [MATERIALIZED] VIEW … AS …` plus its owner.
    pub fn ddl(&self) -> String {
        let what = if self.materialized {
            "MATERIALIZED VIEW"
        } else {
            "VIEW"
        };
        let mut out = format!("CREATE {what} {}", self.name);
        if !self.options.is_empty() {
            let _ = write!(out, " WITH ({})", self.options.join(", "));
        }
        let _ = writeln!(out, " AS\n{};", self.definition.trim_end());
        let _ = writeln!(out, "ALTER {what} {} OWNER TO {};", self.name, self.owner);
        out
    }
}

/// What kind of routine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    /// A normal function.
    Function,
    /// A procedure.
    Procedure,
    /// An aggregate.
    Aggregate,
    /// A window function.
    Window,
}

impl FunctionKind {
    /// From `pg_proc.prokind`.
    pub fn from_prokind(k: &str) -> Self {
        match k {
            "p" => Self::Procedure,
            "a" => Self::Aggregate,
            "w" => Self::Window,
            _ => Self::Function,
        }
    }

    fn sql(self) -> &'static str {
        match self {
            Self::Procedure => "PROCEDURE",
            Self::Aggregate => "AGGREGATE",
            Self::Function | Self::Window => "FUNCTION",
        }
    }
}

/// A function, procedure or aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Function {
    /// `schema.name(identity argument types)`.
    pub name: String,
    /// What kind.
    pub kind: FunctionKind,
    /// Quoted owner role.
    pub owner: String,
    /// `pg_get_functiondef` output (a `CREATE AGGREGATE` for aggregates).
    pub definition: String,
}

impl Function {
    /// The definition plus its owner.
    pub fn ddl(&self) -> String {
        let mut out = self.definition.trim_end().to_owned();
        if !out.ends_with(';') {
            out.push(';');
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "ALTER {} {} OWNER TO {};",
            self.kind.sql(),
            self.name,
            self.owner
        );
        out
    }
}

/// A trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The table's (or view's) quoted, qualified name.
    pub table: String,
    /// Quoted trigger name.
    pub name: String,
    /// `pg_get_triggerdef(oid, true)`.
    pub definition: String,
    /// `pg_trigger.tgenabled`: `O` (origin, the default), `D`, `R` or `A`.
    pub enabled: String,
}

impl Trigger {
    /// `table.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    /// `CREATE TRIGGER …` plus its firing state when not the default.
    pub fn ddl(&self) -> String {
        let mut out = format!("{};\n", self.definition);
        let state = match self.enabled.as_str() {
            "D" => Some("DISABLE TRIGGER"),
            "R" => Some("ENABLE REPLICA TRIGGER"),
            "A" => Some("ENABLE ALWAYS TRIGGER"),
            _ => None,
        };
        if let Some(s) = state {
            let _ = writeln!(out, "ALTER TABLE {} {s} {};", self.table, self.name);
        }
        out
    }
}

/// A row-level security policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The table's quoted, qualified name.
    pub table: String,
    /// Quoted policy name.
    pub name: String,
    /// `PERMISSIVE` (else `RESTRICTIVE`).
    pub permissive: bool,
    /// `ALL`, `SELECT`, `INSERT`, `UPDATE` or `DELETE`.
    pub command: String,
    /// Roles, sorted (`PUBLIC` for everyone).
    pub roles: Vec<String>,
    /// `USING (…)`.
    pub using: Option<String>,
    /// `WITH CHECK (…)`.
    pub with_check: Option<String>,
}

impl Policy {
    /// `table.name`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }

    /// `CREATE POLICY …`.
    pub fn ddl(&self) -> String {
        let mut out = format!(
            "CREATE POLICY {} ON {}\n    AS {}\n    FOR {}\n    TO {}",
            self.name,
            self.table,
            if self.permissive {
                "PERMISSIVE"
            } else {
                "RESTRICTIVE"
            },
            self.command,
            self.roles.join(", ")
        );
        if let Some(u) = &self.using {
            let _ = write!(out, "\n    USING ({u})");
        }
        if let Some(c) = &self.with_check {
            let _ = write!(out, "\n    WITH CHECK ({c})");
        }
        out.push_str(";\n");
        out
    }
}

/// The privileges of one object that differ from its defaults, as statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grants {
    /// `TABLE`, `SEQUENCE`, `SCHEMA`, `FUNCTION`, `PROCEDURE`, `TYPE` or `DOMAIN`.
    pub object_type: String,
    /// The object's quoted, qualified name (functions with argument types).
    pub object: String,
    /// `GRANT …;` / `REVOKE …;` statements, sorted.
    pub statements: Vec<String>,
}

impl Grants {
    /// `TABLE public.t`.
    pub fn qualified_name(&self) -> String {
        format!("{} {}", self.object_type, self.object)
    }

    /// The statements, one per line.
    pub fn ddl(&self) -> String {
        let mut out = String::new();
        for s in &self.statements {
            out.push_str(s);
            out.push('\n');
        }
        out
    }
}

/// Writes `\n    a,\n    b\n` (or nothing for an empty list).
fn write_list(out: &mut String, items: Vec<String>) {
    if items.is_empty() {
        return;
    }
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        out.push_str("\n    ");
        out.push_str(&item);
        if i + 1 < n {
            out.push(',');
        }
    }
    out.push('\n');
}

/// SQL string literal (`'it''s'`, `E'a\\b'` when it holds a backslash).
pub fn quote_literal(s: &str) -> String {
    let escaped = s.replace('\'', "''");
    if s.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            collation: None,
            not_null: false,
            default: None,
            identity: None,
            generated: None,
        }
    }

    #[test]
    fn table_ddl() {
        let mut id = col("id", "bigint");
        id.not_null = true;
        id.identity = Some(Identity {
            always: true,
            sequence: Some("public.t_id_seq".into()),
            options: None,
        });
        let mut name = col("name", "text");
        name.collation = Some("pg_catalog.\"C\"".into());
        name.default = Some("'x'::text".into());
        let t = Table {
            name: "public.t".into(),
            owner: "postgres".into(),
            kind: TableKind::Ordinary,
            unlogged: false,
            columns: vec![id, name],
            partition_key: None,
            partition_of: None,
            inherits: vec![],
            access_method: None,
            options: vec!["fillfactor=70".into()],
            row_security: true,
            force_row_security: false,
            foreign_server: None,
            foreign_options: vec![],
        };
        assert_eq!(
            t.ddl(),
            "CREATE TABLE public.t (\n    \
             id bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME public.t_id_seq) NOT NULL,\n    \
             name text COLLATE pg_catalog.\"C\" DEFAULT 'x'::text\n)\n\
             WITH (fillfactor=70);\n\
             ALTER TABLE public.t ENABLE ROW LEVEL SECURITY;\n\
             ALTER TABLE public.t OWNER TO postgres;\n"
        );
    }

    #[test]
    fn empty_table_and_enum() {
        let t = Table {
            name: "public.e".into(),
            owner: "o".into(),
            kind: TableKind::Ordinary,
            unlogged: true,
            columns: vec![],
            partition_key: None,
            partition_of: None,
            inherits: vec![],
            access_method: None,
            options: vec![],
            row_security: false,
            force_row_security: false,
            foreign_server: None,
            foreign_options: vec![],
        };
        assert_eq!(
            t.ddl(),
            "CREATE UNLOGGED TABLE public.e ();\nALTER TABLE public.e OWNER TO o;\n"
        );
        let e = TypeDef {
            name: "public.mood".into(),
            owner: "o".into(),
            body: TypeBody::Enum {
                labels: vec!["sad".into(), "it's ok".into()],
            },
        };
        assert_eq!(
            e.ddl(),
            "CREATE TYPE public.mood AS ENUM (\n    'sad',\n    'it''s ok'\n);\n\
             ALTER TYPE public.mood OWNER TO o;\n"
        );
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("a"), "'a'");
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn objects_sorted_by_kind_then_name() {
        let mut m = SchemaModel {
            schemas: vec![
                Schema {
                    name: "z".into(),
                    owner: "o".into(),
                },
                Schema {
                    name: "a".into(),
                    owner: "o".into(),
                },
            ],
            indexes: vec![Index {
                name: "public.i".into(),
                table: "public.t".into(),
                definition: "CREATE INDEX i ON public.t USING btree (x)".into(),
                clustered: true,
            }],
            ..Default::default()
        };
        m.normalise();
        let objs = m.objects();
        let names: Vec<_> = objs.iter().map(|o| (o.kind, o.name.as_str())).collect();
        assert_eq!(
            names,
            vec![
                (ObjectKind::Schema, "a"),
                (ObjectKind::Schema, "z"),
                (ObjectKind::Index, "public.i"),
            ]
        );
        assert_eq!(
            objs[2].ddl,
            "CREATE INDEX i ON public.t USING btree (x);\nALTER TABLE public.t CLUSTER ON i;\n"
        );
    }
}
