//! Reads a [`SchemaModel`] from a live Postgres with a fixed handful of catalog queries
//! (twelve, pipelined on one connection inside one read-only transaction), whatever the
//! number of objects.
//!
//! The transaction sets `search_path` to `pg_catalog` only (`SET LOCAL`, so the caller's
//! session is unchanged), which makes `format_type`, `pg_get_*def` and `regproc` output
//! qualify every user object and no built-in one: the DDL is the same whatever the
//! session's settings were.

use std::collections::HashMap;

use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

use crate::error::DiffError;
use crate::model::*;

/// Schemas never compared: `pg_catalog`, `pg_toast*`, `pg_temp_*`, `pg_toast_temp_*`
/// (users cannot create `pg_*` schemas) and `information_schema`.
const NSP_FILTER: &str = "n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'";

fn not_extension_member(catalog: &str, oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = '{catalog}'::regclass \
         AND d.objid = {oid} AND d.deptype = 'e')"
    )
}

/// Functions made by Postgres itself for another object (a range type's constructors)
/// or by an extension are not shown.
fn user_function(oid: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass \
         AND d.objid = {oid} AND d.deptype IN ('e', 'i'))"
    )
}

fn q_schemas() -> String {
    format!(
        "SELECT quote_ident(n.nspname) AS name, quote_ident(pg_get_userbyid(n.nspowner)) AS owner \
         FROM pg_namespace n WHERE {NSP_FILTER} AND {}",
        not_extension_member("pg_namespace", "n.oid")
    )
}

const Q_EXTENSIONS: &str =
    "SELECT quote_ident(e.extname) AS name, quote_ident(n.nspname) AS schema, \
     e.extversion AS version \
     FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace";

fn q_relations() -> String {
    format!(
        "SELECT c.oid, format('%I.%I', n.nspname, c.relname) AS name, c.relkind::text AS kind, \
           c.relpersistence::text AS persistence, \
           quote_ident(pg_get_userbyid(c.relowner)) AS owner, \
           ARRAY(SELECT o FROM unnest(c.reloptions) o ORDER BY o) AS options, \
           CASE WHEN c.relkind = 'p' THEN pg_get_partkeydef(c.oid) END AS partkey, \
           CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END AS partbound, \
           ARRAY(SELECT format('%I.%I', pn.nspname, p.relname) FROM pg_inherits i \
                 JOIN pg_class p ON p.oid = i.inhparent \
                 JOIN pg_namespace pn ON pn.oid = p.relnamespace \
                 WHERE i.inhrelid = c.oid ORDER BY i.inhseqno) AS parents, \
           c.relispartition AS is_partition, \
           CASE WHEN c.relam <> 0 AND am.amname <> 'heap' THEN quote_ident(am.amname) END AS am, \
           c.relrowsecurity AS rls, c.relforcerowsecurity AS force_rls, \
           (SELECT quote_ident(s.srvname) FROM pg_foreign_table ft \
              JOIN pg_foreign_server s ON s.oid = ft.ftserver WHERE ft.ftrelid = c.oid) AS server, \
           (SELECT ARRAY(SELECT o FROM unnest(ft.ftoptions) o ORDER BY o) \
              FROM pg_foreign_table ft WHERE ft.ftrelid = c.oid) AS ftoptions, \
           CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid, true) END AS viewdef \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_am am ON am.oid = c.relam \
         WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm') AND {NSP_FILTER} AND {}",
        not_extension_member("pg_class", "c.oid")
    )
}

fn q_columns() -> String {
    format!(
        "SELECT a.attrelid, a.attnum, quote_ident(a.attname) AS name, \
           format_type(a.atttypid, a.atttypmod) AS type, \
           CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation \
                THEN format('%I.%I', cn.nspname, co.collname) END AS collation, \
           a.attnotnull AS not_null, a.attidentity::text AS identity, \
           a.attgenerated::text AS generated, \
           pg_get_expr(ad.adbin, ad.adrelid) AS default_expr \
         FROM pg_attribute a \
         JOIN pg_class c ON c.oid = a.attrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_type t ON t.oid = a.atttypid \
         LEFT JOIN pg_collation co ON co.oid = a.attcollation \
         LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace \
         LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum \
         WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'f', 'c') \
           AND {NSP_FILTER} \
         ORDER BY a.attrelid, a.attnum"
    )
}

fn q_constraints() -> String {
    format!(
        "SELECT co.conrelid, co.contypid, quote_ident(co.conname) AS name, \
           co.contype::text AS kind, pg_get_constraintdef(co.oid, true) AS def \
         FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace \
         WHERE co.contype NOT IN ('t', 'n') AND {NSP_FILTER}"
    )
}

fn q_indexes() -> String {
    format!(
        "SELECT i.indrelid, format('%I.%I', n.nspname, ic.relname) AS name, \
           pg_get_indexdef(i.indexrelid) AS def, i.indisclustered AS clustered \
         FROM pg_index i \
         JOIN pg_class ic ON ic.oid = i.indexrelid \
         JOIN pg_namespace n ON n.oid = ic.relnamespace \
         WHERE {NSP_FILTER} AND NOT EXISTS (SELECT 1 FROM pg_constraint k \
           WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid \
             AND k.contype IN ('p', 'u', 'x'))"
    )
}

fn q_sequences() -> String {
    format!(
        "SELECT format('%I.%I', n.nspname, c.relname) AS name, \
           quote_ident(pg_get_userbyid(c.relowner)) AS owner, \
           format_type(s.seqtypid, NULL) AS type, s.seqstart, s.seqincrement, s.seqmin, \
           s.seqmax, s.seqcache, s.seqcycle, \
           d.refobjid AS owner_rel, d.deptype::text AS deptype, \
           (SELECT quote_ident(a.attname) FROM pg_attribute a \
              WHERE a.attrelid = d.refobjid AND a.attnum = d.refobjsubid) AS owner_col \
         FROM pg_sequence s \
         JOIN pg_class c ON c.oid = s.seqrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid \
           AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 \
           AND d.deptype IN ('a', 'i') \
         WHERE {NSP_FILTER} AND {}",
        not_extension_member("pg_class", "c.oid")
    )
}

fn q_types() -> String {
    format!(
        "SELECT t.oid, t.typrelid, format('%I.%I', n.nspname, t.typname) AS name, \
           quote_ident(pg_get_userbyid(t.typowner)) AS owner, t.typtype::text AS kind, \
           CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT e.enumlabel::text FROM pg_enum e \
             WHERE e.enumtypid = t.oid ORDER BY e.enumsortorder) END AS labels, \
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod) END AS base, \
           CASE WHEN t.typtype = 'd' AND t.typcollation <> 0 AND t.typcollation <> bt.typcollation \
             THEN (SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co \
                   JOIN pg_namespace cn ON cn.oid = co.collnamespace \
                   WHERE co.oid = t.typcollation) END AS collation, \
           pg_get_expr(t.typdefaultbin, 0) AS default_expr, t.typnotnull AS not_null, \
           CASE WHEN t.typtype = 'r' THEN array_remove(ARRAY[ \
             'SUBTYPE = ' || format_type(r.rngsubtype, NULL), \
             'SUBTYPE_OPCLASS = ' || (SELECT format('%I.%I', ocn.nspname, oc.opcname) \
                FROM pg_opclass oc JOIN pg_namespace ocn ON ocn.oid = oc.opcnamespace \
                WHERE oc.oid = r.rngsubopc), \
             CASE WHEN r.rngcollation <> 0 THEN 'COLLATION = ' || (SELECT format('%I.%I', \
                cn.nspname, co.collname) FROM pg_collation co \
                JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = r.rngcollation) END, \
             CASE WHEN r.rngcanonical::oid <> 0 THEN 'CANONICAL = ' || r.rngcanonical::text END, \
             CASE WHEN r.rngsubdiff::oid <> 0 THEN 'SUBTYPE_DIFF = ' || r.rngsubdiff::text END, \
             'MULTIRANGE_TYPE_NAME = ' || format_type(r.rngmultitypid, NULL) \
           ], NULL) END AS range_options \
         FROM pg_type t \
         JOIN pg_namespace n ON n.oid = t.typnamespace \
         LEFT JOIN pg_type bt ON bt.oid = t.typbasetype \
         LEFT JOIN pg_class rc ON rc.oid = t.typrelid \
         LEFT JOIN pg_range r ON r.rngtypid = t.oid \
         WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND rc.relkind = 'c')) \
           AND {NSP_FILTER} AND {}",
        not_extension_member("pg_type", "t.oid")
    )
}

fn q_functions() -> String {
    format!(
        "SELECT format('%I.%I(%s)', n.nspname, p.proname, \
             pg_get_function_identity_arguments(p.oid)) AS name, \
           p.prokind::text AS kind, quote_ident(pg_get_userbyid(p.proowner)) AS owner, \
           CASE WHEN p.prokind = 'a' THEN \
             format(E'CREATE AGGREGATE %I.%I(%s) (\\n    %s\\n)', n.nspname, p.proname, \
               pg_get_function_arguments(p.oid), concat_ws(E',\\n    ', \
                 'SFUNC = ' || ag.aggtransfn::text, \
                 'STYPE = ' || format_type(ag.aggtranstype, NULL), \
                 CASE WHEN ag.aggfinalfn::oid <> 0 THEN 'FINALFUNC = ' || ag.aggfinalfn::text END, \
                 CASE WHEN ag.aggcombinefn::oid <> 0 THEN 'COMBINEFUNC = ' || ag.aggcombinefn::text END, \
                 CASE WHEN ag.agginitval IS NOT NULL THEN 'INITCOND = ' || quote_literal(ag.agginitval) END, \
                 CASE WHEN ag.aggsortop <> 0 THEN 'SORTOP = ' || ag.aggsortop::regoperator::text END, \
                 CASE WHEN ag.aggkind <> 'n' THEN 'KIND = ' || ag.aggkind::text END)) \
           ELSE pg_get_functiondef(p.oid) END AS def \
         FROM pg_proc p \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         LEFT JOIN pg_aggregate ag ON ag.aggfnoid = p.oid \
         WHERE {NSP_FILTER} AND {}",
        user_function("p.oid")
    )
}

const Q_TRIGGERS: &str = "SELECT t.tgrelid, quote_ident(t.tgname) AS name, \
       pg_get_triggerdef(t.oid, true) AS def, t.tgenabled::text AS enabled \
     FROM pg_trigger t WHERE NOT t.tgisinternal";

const Q_POLICIES: &str =
    "SELECT p.polrelid, quote_ident(p.polname) AS name, p.polcmd::text AS cmd, \
       p.polpermissive AS permissive, \
       ARRAY(SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END \
             FROM unnest(p.polroles) r ORDER BY 1) AS roles, \
       pg_get_expr(p.polqual, p.polrelid) AS using_expr, \
       pg_get_expr(p.polwithcheck, p.polrelid) AS check_expr \
     FROM pg_policy p";

/// Privileges that differ from `acldefault` (what `GRANT`/`REVOKE` changed), one row per
/// grantee and privilege, so that a `NULL` ACL and an explicit default ACL compare equal.
fn q_grants() -> String {
    let rel_member = not_extension_member("pg_class", "c.oid");
    let nsp_member = not_extension_member("pg_namespace", "n.oid");
    let proc_member = user_function("p.oid");
    let type_member = not_extension_member("pg_type", "t.oid");
    format!(
        "WITH objs AS ( \
           SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS objtype, \
             format('%I.%I', n.nspname, c.relname) AS objname, NULL::text AS col, c.relacl AS acl, \
             acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\", c.relowner) AS def, \
             c.relowner AS owner \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {NSP_FILTER} AND {rel_member} \
         UNION ALL \
           SELECT CASE c.relkind WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, \
             format('%I.%I', n.nspname, c.relname), quote_ident(a.attname), a.attacl, \
             NULL::aclitem[], c.relowner \
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace \
           WHERE a.attacl IS NOT NULL AND a.attnum > 0 AND NOT a.attisdropped \
             AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {NSP_FILTER} AND {rel_member} \
         UNION ALL \
           SELECT 'SCHEMA', quote_ident(n.nspname), NULL, n.nspacl, \
             acldefault('n', n.nspowner), n.nspowner \
           FROM pg_namespace n WHERE {NSP_FILTER} AND {nsp_member} \
         UNION ALL \
           SELECT CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, \
             format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)), \
             NULL, p.proacl, acldefault('f', p.proowner), p.proowner \
           FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
           WHERE {NSP_FILTER} AND {proc_member} \
         UNION ALL \
           SELECT CASE t.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END, \
             format('%I.%I', n.nspname, t.typname), NULL, t.typacl, \
             acldefault('T', t.typowner), t.typowner \
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace \
           LEFT JOIN pg_class rc ON rc.oid = t.typrelid \
           WHERE (t.typtype IN ('e', 'd', 'r') OR (t.typtype = 'c' AND rc.relkind = 'c')) \
             AND {NSP_FILTER} AND {type_member} \
         ) \
         SELECT o.objtype, o.objname, o.col, x.action, x.privilege_type, x.is_grantable, \
           CASE WHEN x.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(x.grantee)) END AS grantee, \
           CASE WHEN x.grantor <> o.owner THEN quote_ident(pg_get_userbyid(x.grantor)) END AS grantor \
         FROM objs o, LATERAL ( \
           (SELECT 'GRANT' AS action, g.grantor, g.grantee, g.privilege_type, g.is_grantable \
              FROM aclexplode(coalesce(o.acl, o.def)) g \
            EXCEPT SELECT 'GRANT', d.grantor, d.grantee, d.privilege_type, d.is_grantable \
              FROM aclexplode(o.def) d) \
           UNION ALL \
           (SELECT 'REVOKE', d.grantor, d.grantee, d.privilege_type, d.is_grantable \
              FROM aclexplode(o.def) d \
            EXCEPT SELECT 'REVOKE', g.grantor, g.grantee, g.privilege_type, g.is_grantable \
              FROM aclexplode(coalesce(o.acl, o.def)) g) \
         ) x"
    )
}

/// Reads the schema of the database `client` is connected to.
///
/// Runs in its own `REPEATABLE READ READ ONLY` transaction (so the model is one
/// consistent snapshot), with `search_path` set locally; the session is left as it was.
/// Takes `&mut` only because a transaction needs it; the client is usable afterwards.
/// The client must not be inside a transaction of its own.
pub async fn extract_schema(client: &mut Client) -> Result<SchemaModel, DiffError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(DiffError::query("begin the catalog transaction"))?;
    tx.batch_execute("SET LOCAL search_path = pg_catalog")
        .await
        .map_err(DiffError::query("set search_path"))?;
    let model = read_model(&tx).await?;
    tx.commit()
        .await
        .map_err(DiffError::query("end the catalog transaction"))?;
    Ok(model)
}

async fn run(tx: &Transaction<'_>, what: &'static str, sql: &str) -> Result<Vec<Row>, DiffError> {
    tx.query(sql, &[]).await.map_err(DiffError::query(what))
}

async fn read_model(tx: &Transaction<'_>) -> Result<SchemaModel, DiffError> {
    let (sq, rq, cq, kq, iq, seq, tq, fq, gq) = (
        q_schemas(),
        q_relations(),
        q_columns(),
        q_constraints(),
        q_indexes(),
        q_sequences(),
        q_types(),
        q_functions(),
        q_grants(),
    );
    // All queries are sent at once: tokio-postgres pipelines them on the connection.
    let (
        schemas,
        extensions,
        relations,
        columns,
        constraints,
        indexes,
        sequences,
        types,
        functions,
        triggers,
        policies,
        grants,
    ) = tokio::try_join!(
        run(tx, "read schemas", &sq),
        run(tx, "read extensions", Q_EXTENSIONS),
        run(tx, "read tables and views", &rq),
        run(tx, "read columns", &cq),
        run(tx, "read constraints", &kq),
        run(tx, "read indexes", &iq),
        run(tx, "read sequences", &seq),
        run(tx, "read types", &tq),
        run(tx, "read functions", &fq),
        run(tx, "read triggers", Q_TRIGGERS),
        run(tx, "read policies", Q_POLICIES),
        run(tx, "read privileges", &gq),
    )?;
    build_model(Rows {
        schemas,
        extensions,
        relations,
        columns,
        constraints,
        indexes,
        sequences,
        types,
        functions,
        triggers,
        policies,
        grants,
    })
}

struct Rows {
    schemas: Vec<Row>,
    extensions: Vec<Row>,
    relations: Vec<Row>,
    columns: Vec<Row>,
    constraints: Vec<Row>,
    indexes: Vec<Row>,
    sequences: Vec<Row>,
    types: Vec<Row>,
    functions: Vec<Row>,
    triggers: Vec<Row>,
    policies: Vec<Row>,
    grants: Vec<Row>,
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    col: &'static str,
) -> Result<T, DiffError> {
    row.try_get(col).map_err(|source| DiffError::Decode {
        column: col,
        source,
    })
}

fn build_model(rows: Rows) -> Result<SchemaModel, DiffError> {
    let mut m = SchemaModel::default();

    for r in &rows.schemas {
        m.schemas.push(Schema {
            name: get(r, "name")?,
            owner: get(r, "owner")?,
        });
    }
    for r in &rows.extensions {
        m.extensions.push(Extension {
            name: get(r, "name")?,
            schema: get(r, "schema")?,
            version: get(r, "version")?,
        });
    }

    // Columns by relation OID (tables and composite types), in attnum order.
    let mut columns: HashMap<u32, Vec<(i16, Column, String, String)>> = HashMap::new();
    for r in &rows.columns {
        let rel: u32 = get(r, "attrelid")?;
        let attnum: i16 = get(r, "attnum")?;
        let identity: String = get(r, "identity")?;
        let generated: String = get(r, "generated")?;
        let default: Option<String> = get(r, "default_expr")?;
        let col = Column {
            name: get(r, "name")?,
            data_type: get(r, "type")?,
            collation: get(r, "collation")?,
            not_null: get(r, "not_null")?,
            default: if generated.is_empty() {
                default.clone()
            } else {
                None
            },
            identity: None,
            generated: if generated.is_empty() { None } else { default },
        };
        columns
            .entry(rel)
            .or_default()
            .push((attnum, col, identity, generated));
    }

    // Sequences; identity sequences are kept aside for their columns.
    let mut identity_seqs: HashMap<(u32, String), (String, SequenceOptions)> = HashMap::new();
    let mut serial_owner: Vec<(usize, u32, String)> = Vec::new();
    for r in &rows.sequences {
        let name: String = get(r, "name")?;
        let options = SequenceOptions {
            data_type: get(r, "type")?,
            start: get(r, "seqstart")?,
            increment: get(r, "seqincrement")?,
            min: get(r, "seqmin")?,
            max: get(r, "seqmax")?,
            cache: get(r, "seqcache")?,
            cycle: get(r, "seqcycle")?,
        };
        let deptype: Option<String> = get(r, "deptype")?;
        let owner_rel: Option<u32> = get(r, "owner_rel")?;
        let owner_col: Option<String> = get(r, "owner_col")?;
        match (deptype.as_deref(), owner_rel, owner_col) {
            (Some("i"), Some(rel), Some(col)) => {
                identity_seqs.insert((rel, col), (name, options));
            }
            (Some("a"), Some(rel), Some(col)) => {
                serial_owner.push((m.sequences.len(), rel, col));
                m.sequences.push(Sequence {
                    name,
                    owner: get(r, "owner")?,
                    options,
                    owned_by: None,
                });
            }
            _ => m.sequences.push(Sequence {
                name,
                owner: get(r, "owner")?,
                options,
                owned_by: None,
            }),
        }
    }

    // Tables and views.
    let mut rel_names: HashMap<u32, String> = HashMap::new();
    for r in &rows.relations {
        let oid: u32 = get(r, "oid")?;
        let name: String = get(r, "name")?;
        let kind: String = get(r, "kind")?;
        let owner: String = get(r, "owner")?;
        let options: Vec<String> = get(r, "options")?;
        rel_names.insert(oid, name.clone());
        match kind.as_str() {
            "v" | "m" => {
                let def: Option<String> = get(r, "viewdef")?;
                let def = def.unwrap_or_default();
                let def = def.trim_end().trim_end_matches(';').to_owned();
                m.views.push(View {
                    name,
                    owner,
                    materialized: kind == "m",
                    options,
                    definition: def,
                });
            }
            _ => {
                let is_partition: bool = get(r, "is_partition")?;
                let parents: Vec<String> = get(r, "parents")?;
                let bound: Option<String> = get(r, "partbound")?;
                let partition_of = match (is_partition, parents.first(), bound) {
                    (true, Some(p), Some(b)) => Some(PartitionOf {
                        parent: p.clone(),
                        bound: b,
                    }),
                    _ => None,
                };
                let persistence: String = get(r, "persistence")?;
                let mut cols = columns.remove(&oid).unwrap_or_default();
                cols.sort_by_key(|c| c.0);
                let cols = cols
                    .into_iter()
                    .map(|(_, mut c, identity, _)| {
                        if !identity.is_empty() {
                            let seq = identity_seqs.remove(&(oid, c.name.clone()));
                            c.identity = Some(Identity {
                                always: identity == "a",
                                sequence: seq.as_ref().map(|s| s.0.clone()),
                                options: seq.map(|s| s.1),
                            });
                        }
                        c
                    })
                    .collect();
                m.tables.push(Table {
                    name,
                    owner,
                    kind: match kind.as_str() {
                        "p" => TableKind::Partitioned,
                        "f" => TableKind::Foreign,
                        _ => TableKind::Ordinary,
                    },
                    unlogged: persistence == "u",
                    columns: cols,
                    partition_key: get(r, "partkey")?,
                    inherits: if partition_of.is_some() {
                        Vec::new()
                    } else {
                        parents
                    },
                    partition_of,
                    access_method: get(r, "am")?,
                    options,
                    row_security: get(r, "rls")?,
                    force_row_security: get(r, "force_rls")?,
                    foreign_server: get(r, "server")?,
                    foreign_options: get::<Option<Vec<String>>>(r, "ftoptions")?
                        .unwrap_or_default(),
                });
            }
        }
    }
    for (i, rel, col) in serial_owner {
        if let Some(t) = rel_names.get(&rel) {
            m.sequences[i].owned_by = Some(format!("{t}.{col}"));
        }
    }

    // Types (domain constraints are attached below).
    let mut domains: HashMap<u32, usize> = HashMap::new();
    for r in &rows.types {
        let oid: u32 = get(r, "oid")?;
        let kind: String = get(r, "kind")?;
        let body = match kind.as_str() {
            "e" => TypeBody::Enum {
                labels: get::<Option<Vec<String>>>(r, "labels")?.unwrap_or_default(),
            },
            "d" => {
                domains.insert(oid, m.types.len());
                TypeBody::Domain {
                    base: get::<Option<String>>(r, "base")?.unwrap_or_default(),
                    collation: get(r, "collation")?,
                    default: get(r, "default_expr")?,
                    not_null: get(r, "not_null")?,
                    constraints: Vec::new(),
                }
            }
            "r" => TypeBody::Range {
                options: get::<Option<Vec<String>>>(r, "range_options")?.unwrap_or_default(),
            },
            _ => {
                let relid: u32 = get(r, "typrelid")?;
                let mut cols = columns.remove(&relid).unwrap_or_default();
                cols.sort_by_key(|c| c.0);
                TypeBody::Composite {
                    attributes: cols.into_iter().map(|c| c.1).collect(),
                }
            }
        };
        m.types.push(TypeDef {
            name: get(r, "name")?,
            owner: get(r, "owner")?,
            body,
        });
    }

    for r in &rows.constraints {
        let rel: u32 = get(r, "conrelid")?;
        let typ: u32 = get(r, "contypid")?;
        let name: String = get(r, "name")?;
        let def: String = get(r, "def")?;
        if let Some(table) = rel_names.get(&rel) {
            let kind: String = get(r, "kind")?;
            m.constraints.push(Constraint {
                table: table.clone(),
                name,
                kind: ConstraintKind::from_contype(&kind),
                definition: def,
            });
        } else if let Some(&i) = domains.get(&typ) {
            if let TypeBody::Domain { constraints, .. } = &mut m.types[i].body {
                constraints.push((name, def));
            }
        }
    }

    for r in &rows.indexes {
        let rel: u32 = get(r, "indrelid")?;
        if let Some(table) = rel_names.get(&rel) {
            m.indexes.push(Index {
                name: get(r, "name")?,
                table: table.clone(),
                definition: get(r, "def")?,
                clustered: get(r, "clustered")?,
            });
        }
    }

    for r in &rows.functions {
        let kind: String = get(r, "kind")?;
        m.functions.push(Function {
            name: get(r, "name")?,
            kind: FunctionKind::from_prokind(&kind),
            owner: get(r, "owner")?,
            definition: get::<Option<String>>(r, "def")?.unwrap_or_default(),
        });
    }

    for r in &rows.triggers {
        let rel: u32 = get(r, "tgrelid")?;
        if let Some(table) = rel_names.get(&rel) {
            m.triggers.push(Trigger {
                table: table.clone(),
                name: get(r, "name")?,
                definition: get(r, "def")?,
                enabled: get(r, "enabled")?,
            });
        }
    }

    for r in &rows.policies {
        let rel: u32 = get(r, "polrelid")?;
        if let Some(table) = rel_names.get(&rel) {
            let cmd: String = get(r, "cmd")?;
            m.policies.push(Policy {
                table: table.clone(),
                name: get(r, "name")?,
                permissive: get(r, "permissive")?,
                command: match cmd.as_str() {
                    "r" => "SELECT",
                    "a" => "INSERT",
                    "w" => "UPDATE",
                    "d" => "DELETE",
                    _ => "ALL",
                }
                .to_owned(),
                roles: get(r, "roles")?,
                using: get(r, "using_expr")?,
                with_check: get(r, "check_expr")?,
            });
        }
    }

    m.grants = build_grants(&rows.grants)?;
    m.normalise();
    Ok(m)
}

/// Groups privilege rows into one [`Grants`] per object, one statement per
/// (action, column, grantee, grant option, grantor) with its privileges joined.
fn build_grants(rows: &[Row]) -> Result<Vec<Grants>, DiffError> {
    type Key = (
        String,
        String,
        String,
        Option<String>,
        String,
        bool,
        Option<String>,
    );
    let mut stmts: HashMap<Key, Vec<String>> = HashMap::new();
    for r in rows {
        let key: Key = (
            get(r, "objtype")?,
            get(r, "objname")?,
            get(r, "action")?,
            get(r, "col")?,
            get(r, "grantee")?,
            get(r, "is_grantable")?,
            get(r, "grantor")?,
        );
        stmts
            .entry(key)
            .or_default()
            .push(get(r, "privilege_type")?);
    }
    let mut objects: HashMap<(String, String), Vec<String>> = HashMap::new();
    for ((objtype, objname, action, col, grantee, grantable, grantor), mut privs) in stmts {
        privs.sort();
        privs.dedup();
        let privs = match &col {
            Some(c) => privs
                .iter()
                .map(|p| format!("{p} ({c})"))
                .collect::<Vec<_>>()
                .join(", "),
            None => privs.join(", "),
        };
        let stmt = if action == "GRANT" {
            let mut s = format!("GRANT {privs} ON {objtype} {objname} TO {grantee}");
            if grantable {
                s.push_str(" WITH GRANT OPTION");
            }
            if let Some(g) = grantor {
                s.push_str(" GRANTED BY ");
                s.push_str(&g);
            }
            s.push(';');
            s
        } else {
            format!("REVOKE {privs} ON {objtype} {objname} FROM {grantee};")
        };
        objects.entry((objtype, objname)).or_default().push(stmt);
    }
    Ok(objects
        .into_iter()
        .map(|((object_type, object), statements)| Grants {
            object_type,
            object,
            statements,
        })
        .collect())
}
