//! Comparing two [`SchemaModel`]s object by object, and rendering the result as a
//! unified diff grouped by object.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::model::{DbObject, ObjectKind, SchemaModel};
use crate::textdiff::{diff_lines, hunks, Op};

/// How an object differs between side A (before) and side B (after).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Only in B.
    Added,
    /// Only in A.
    Removed,
    /// In both, with different DDL.
    Changed,
}

impl Change {
    /// `added`, `removed` or `changed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Changed => "changed",
        }
    }
}

/// Column-level detail of a changed table (quoted column names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnChanges {
    /// Columns only in B.
    pub added: Vec<String>,
    /// Columns only in A.
    pub removed: Vec<String>,
    /// Columns in both whose definition (type, default, nullability, …) differs.
    pub changed: Vec<String>,
}

impl ColumnChanges {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// One object that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectChange {
    /// What kind of object.
    pub kind: ObjectKind,
    /// Its quoted, qualified name (see [`DbObject::name`]).
    pub name: String,
    /// Added, removed or changed.
    pub change: Change,
    /// Its DDL in A (absent when added).
    pub before: Option<String>,
    /// Its DDL in B (absent when removed).
    pub after: Option<String>,
    /// For a changed table whose columns differ: which ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<ColumnChanges>,
}

impl ObjectChange {
    /// `table public.users`.
    pub fn title(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }
}

/// Every object that differs between two schemas, in kind then name order. Serialises
/// as a JSON list of [`ObjectChange`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SchemaDiff {
    /// The differences.
    pub changes: Vec<ObjectChange>,
}

/// Counts of a [`SchemaDiff`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSummary {
    /// Objects only in B.
    pub added: usize,
    /// Objects only in A.
    pub removed: usize,
    /// Objects in both that differ.
    pub changed: usize,
}

impl std::fmt::Display for DiffSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.added + self.removed + self.changed;
        if total == 0 {
            return f.write_str("schemas are identical");
        }
        write!(
            f,
            "{total} object{} differ{}: {} added, {} removed, {} changed",
            if total == 1 { "" } else { "s" },
            if total == 1 { "s" } else { "" },
            self.added,
            self.removed,
            self.changed
        )
    }
}

/// How to render a diff as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderOptions {
    /// Name of side A (`---` line, data column), e.g. the branch name.
    pub a_label: String,
    /// Name of side B (`+++` line).
    pub b_label: String,
    /// Unchanged lines around each change in a changed object.
    pub context: usize,
    /// ANSI colours (red/green lines, bold headers, cyan hunk headers).
    pub color: bool,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            a_label: "a".to_owned(),
            b_label: "b".to_owned(),
            context: 3,
            color: false,
        }
    }
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

struct Painter(bool);

impl Painter {
    fn line(&self, out: &mut String, style: &str, text: &str) {
        if self.0 {
            let _ = writeln!(out, "{style}{text}{RESET}");
        } else {
            let _ = writeln!(out, "{text}");
        }
    }
}

impl SchemaDiff {
    /// True when the two schemas are identical (for `--exit-code`).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// How many objects were added, removed and changed.
    pub fn summary(&self) -> DiffSummary {
        let mut s = DiffSummary::default();
        for c in &self.changes {
            match c.change {
                Change::Added => s.added += 1,
                Change::Removed => s.removed += 1,
                Change::Changed => s.changed += 1,
            }
        }
        s
    }

    /// The changes of one kind.
    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = &ObjectChange> {
        self.changes.iter().filter(move |c| c.kind == kind)
    }

    /// The change of object `kind name`, if it differs.
    pub fn find(&self, kind: ObjectKind, name: &str) -> Option<&ObjectChange> {
        self.changes
            .iter()
            .find(|c| c.kind == kind && c.name == name)
    }

    /// A unified diff of the normalised DDL, one section per object:
    ///
    /// ```text
    /// --- main
    /// +++ feature
    /// ## table public.users (changed)
    /// @@ -1,5 +1,6 @@
    ///  CREATE TABLE public.users (
    ///      id bigint NOT NULL,
    /// -    name text
    /// +    name text,
    /// +    email text
    ///  );
    ///
    /// ## index public.users_email_idx (added)
    /// +CREATE INDEX users_email_idx ON public.users USING btree (email);
    /// ```
    ///
    /// Empty when there is no difference.
    pub fn render(&self, opts: &RenderOptions) -> String {
        let mut out = String::new();
        if self.changes.is_empty() {
            return out;
        }
        let p = Painter(opts.color);
        p.line(&mut out, BOLD, &format!("--- {}", opts.a_label));
        p.line(&mut out, BOLD, &format!("+++ {}", opts.b_label));
        for (i, c) in self.changes.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            p.line(
                &mut out,
                BOLD,
                &format!("## {} ({})", c.title(), c.change.as_str()),
            );
            let before = c.before.as_deref().unwrap_or("");
            let after = c.after.as_deref().unwrap_or("");
            let old: Vec<&str> = before.lines().collect();
            let new: Vec<&str> = after.lines().collect();
            match c.change {
                Change::Added => new
                    .iter()
                    .for_each(|l| p.line(&mut out, GREEN, &format!("+{l}"))),
                Change::Removed => old
                    .iter()
                    .for_each(|l| p.line(&mut out, RED, &format!("-{l}"))),
                Change::Changed => {
                    let ops = diff_lines(&old, &new);
                    for h in hunks(&ops, opts.context) {
                        p.line(&mut out, CYAN, &h.header());
                        for op in &h.ops {
                            match op {
                                Op::Equal(l) => {
                                    let _ = writeln!(out, " {l}");
                                }
                                Op::Delete(l) => p.line(&mut out, RED, &format!("-{l}")),
                                Op::Insert(l) => p.line(&mut out, GREEN, &format!("+{l}")),
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

/// Compares two schemas: `a` is the "before" side (`-` lines, `removed`), `b` the
/// "after" side (`+` lines, `added`).
pub fn diff_schemas(a: &SchemaModel, b: &SchemaModel) -> SchemaDiff {
    let oa = a.objects();
    let ob = b.objects();
    let key = |o: &DbObject| (o.kind, o.name.clone());
    let mut changes = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < oa.len() || j < ob.len() {
        let ord = match (oa.get(i), ob.get(j)) {
            (Some(x), Some(y)) => key(x).cmp(&key(y)),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                let x = &oa[i];
                changes.push(ObjectChange {
                    kind: x.kind,
                    name: x.name.clone(),
                    change: Change::Removed,
                    before: Some(x.ddl.clone()),
                    after: None,
                    columns: None,
                });
                i += 1;
            }
            Ordering::Greater => {
                let y = &ob[j];
                changes.push(ObjectChange {
                    kind: y.kind,
                    name: y.name.clone(),
                    change: Change::Added,
                    before: None,
                    after: Some(y.ddl.clone()),
                    columns: None,
                });
                j += 1;
            }
            Ordering::Equal => {
                let (x, y) = (&oa[i], &ob[j]);
                if x.ddl != y.ddl {
                    let columns = if x.kind == ObjectKind::Table {
                        column_changes(a, b, &x.name)
                    } else {
                        None
                    };
                    changes.push(ObjectChange {
                        kind: x.kind,
                        name: x.name.clone(),
                        change: Change::Changed,
                        before: Some(x.ddl.clone()),
                        after: Some(y.ddl.clone()),
                        columns,
                    });
                }
                i += 1;
                j += 1;
            }
        }
    }
    SchemaDiff { changes }
}

fn column_changes(a: &SchemaModel, b: &SchemaModel, table: &str) -> Option<ColumnChanges> {
    let (ta, tb) = (a.table(table)?, b.table(table)?);
    let mut cc = ColumnChanges::default();
    for c in &ta.columns {
        match tb.column(&c.name) {
            None => cc.removed.push(c.name.clone()),
            Some(d) if d != c => cc.changed.push(c.name.clone()),
            Some(_) => {}
        }
    }
    for c in &tb.columns {
        if ta.column(&c.name).is_none() {
            cc.added.push(c.name.clone());
        }
    }
    (!cc.is_empty()).then_some(cc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    fn col(name: &str, ty: &str, not_null: bool) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            collation: None,
            not_null,
            default: None,
            identity: None,
            generated: None,
        }
    }

    fn table(name: &str, columns: Vec<Column>) -> Table {
        Table {
            name: name.into(),
            owner: "postgres".into(),
            kind: TableKind::Ordinary,
            unlogged: false,
            columns,
            partition_key: None,
            partition_of: None,
            inherits: vec![],
            access_method: None,
            options: vec![],
            row_security: false,
            force_row_security: false,
            foreign_server: None,
            foreign_options: vec![],
        }
    }

    fn base() -> SchemaModel {
        let mut m = SchemaModel {
            schemas: vec![Schema {
                name: "public".into(),
                owner: "pg_database_owner".into(),
            }],
            tables: vec![table(
                "public.users",
                vec![col("id", "bigint", true), col("name", "text", false)],
            )],
            constraints: vec![
                Constraint {
                    table: "public.users".into(),
                    name: "users_pkey".into(),
                    kind: ConstraintKind::PrimaryKey,
                    definition: "PRIMARY KEY (id)".into(),
                },
                Constraint {
                    table: "public.users".into(),
                    name: "users_name_check".into(),
                    kind: ConstraintKind::Check,
                    definition: "CHECK (name <> ''::text)".into(),
                },
            ],
            functions: vec![Function {
                name: "public.f()".into(),
                kind: FunctionKind::Function,
                owner: "postgres".into(),
                definition: "CREATE OR REPLACE FUNCTION public.f()\n RETURNS integer\n \
                             LANGUAGE sql\nAS $function$SELECT 1$function$\n"
                    .into(),
            }],
            ..Default::default()
        };
        m.normalise();
        m
    }

    fn changed() -> SchemaModel {
        let mut m = base();
        m.tables[0].columns.push(col("email", "text", false));
        m.constraints.retain(|c| c.name != "users_name_check");
        m.indexes.push(Index {
            name: "public.users_email_idx".into(),
            table: "public.users".into(),
            definition: "CREATE INDEX users_email_idx ON public.users USING btree (email)".into(),
            clustered: false,
        });
        m.functions[0].definition = m.functions[0].definition.replace("SELECT 1", "SELECT 2");
        m.normalise();
        m
    }

    #[test]
    fn identical_models_give_empty_diff() {
        let d = diff_schemas(&base(), &base());
        assert!(d.is_empty());
        assert_eq!(d.render(&RenderOptions::default()), "");
        assert_eq!(d.summary().to_string(), "schemas are identical");
        assert_eq!(serde_json::to_string(&d).unwrap(), "[]");
    }

    #[test]
    fn each_kind_of_change_is_found() {
        let d = diff_schemas(&base(), &changed());
        let got: Vec<_> = d
            .changes
            .iter()
            .map(|c| (c.kind, c.name.as_str(), c.change))
            .collect();
        assert_eq!(
            got,
            vec![
                (ObjectKind::Table, "public.users", Change::Changed),
                (
                    ObjectKind::Constraint,
                    "public.users.users_name_check",
                    Change::Removed
                ),
                (ObjectKind::Index, "public.users_email_idx", Change::Added),
                (ObjectKind::Function, "public.f()", Change::Changed),
            ]
        );
        assert_eq!(
            d.changes[0].columns,
            Some(ColumnChanges {
                added: vec!["email".into()],
                ..Default::default()
            })
        );
        assert_eq!(
            d.summary().to_string(),
            "4 objects differ: 1 added, 1 removed, 2 changed"
        );
    }

    #[test]
    fn unified_rendering() {
        let d = diff_schemas(&base(), &changed());
        let text = d.render(&RenderOptions {
            a_label: "main".into(),
            b_label: "feature".into(),
            ..Default::default()
        });
        let expected = "\
--- main
+++ feature
## table public.users (changed)
@@ -1,5 +1,6 @@
 CREATE TABLE public.users (
     id bigint NOT NULL,
-    name text
+    name text,
+    email text
 );
 ALTER TABLE public.users OWNER TO postgres;

## constraint public.users.users_name_check (removed)
-ALTER TABLE public.users ADD CONSTRAINT users_name_check CHECK (name <> ''::text);

## index public.users_email_idx (added)
+CREATE INDEX users_email_idx ON public.users USING btree (email);

## function public.f() (changed)
@@ -1,5 +1,5 @@
 CREATE OR REPLACE FUNCTION public.f()
  RETURNS integer
  LANGUAGE sql
-AS $function$SELECT 1$function$;
+AS $function$SELECT 2$function$;
 ALTER FUNCTION public.f() OWNER TO postgres;
";
        assert_eq!(text, expected);
    }

    #[test]
    fn reversed_sides_swap_added_and_removed() {
        let d = diff_schemas(&changed(), &base());
        let kinds: Vec<_> = d.changes.iter().map(|c| c.change).collect();
        assert_eq!(
            kinds,
            vec![
                Change::Changed,
                Change::Added,
                Change::Removed,
                Change::Changed
            ]
        );
        assert_eq!(
            d.changes[0].columns.as_ref().unwrap().removed,
            vec!["email".to_owned()]
        );
    }

    #[test]
    fn colored_output_wraps_lines() {
        let d = diff_schemas(&base(), &changed());
        let text = d.render(&RenderOptions {
            color: true,
            ..Default::default()
        });
        assert!(text.contains("\x1b[32m+    email text\x1b[0m\n"));
        assert!(text.contains("\x1b[31m-ALTER TABLE public.users ADD CONSTRAINT"));
        assert!(text.contains("\x1b[36m@@ -1,5 +1,6 @@\x1b[0m\n"));
    }

    #[test]
    fn json_shape() {
        let d = diff_schemas(&base(), &changed());
        let v = serde_json::to_value(&d).unwrap();
        let list = v.as_array().unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(list[0]["kind"], "table");
        assert_eq!(list[0]["name"], "public.users");
        assert_eq!(list[0]["change"], "changed");
        assert_eq!(list[0]["columns"]["added"][0], "email");
        assert!(list[0]["before"].as_str().unwrap().contains("name text\n"));
        assert_eq!(list[1]["change"], "removed");
        assert!(list[1]["after"].is_null());
        assert_eq!(list[2]["kind"], "index");
        assert_eq!(list[2]["change"], "added");
        assert!(list[2]["before"].is_null());
        assert!(list[2].get("columns").is_none());
        let back: SchemaDiff = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
    }
}
