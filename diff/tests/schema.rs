//! Schema extraction and diff against a real Postgres 15 (two databases on one server).

mod common;

use std::collections::BTreeSet;

use common::{base_schema, Pg, BASE_SCHEMA, ROLES};
use ramify_diff::model::{FunctionKind, TypeBody};
use ramify_diff::{
    diff_databases, diff_schemas, extract_schema, Change, DiffOptions, ObjectKind, RenderOptions,
};

/// The base schema created in another order, after OIDs were used up by a dropped table.
fn base_schema_reordered() -> String {
    let moved = [
        "CREATE UNLOGGED TABLE app.scratch",
        "CREATE TABLE app.parent",
        "CREATE TABLE app.child",
        "CREATE TYPE app.floatrange",
        "CREATE TYPE app.pair",
        "CREATE SEQUENCE app.counter",
    ];
    let is_moved = |s: &&str| moved.iter().any(|m| s.starts_with(m));
    let mut out: Vec<String> = vec![
        "CREATE TABLE junk AS SELECT generate_series(1, 100) AS x".into(),
        "DROP TABLE junk".into(),
        "CREATE FUNCTION public.junk() RETURNS int LANGUAGE sql AS 'SELECT 1'".into(),
        "DROP FUNCTION public.junk()".into(),
    ];
    out.extend(BASE_SCHEMA[..2].iter().map(|s| s.to_string()));
    // Moved statements first, in reverse (child still after parent).
    let mut first: Vec<&str> = BASE_SCHEMA.iter().copied().filter(is_moved).collect();
    first.reverse();
    let pos_child = first
        .iter()
        .position(|s| s.starts_with("CREATE TABLE app.child"))
        .unwrap();
    let pos_parent = first
        .iter()
        .position(|s| s.starts_with("CREATE TABLE app.parent"))
        .unwrap();
    first.swap(pos_child, pos_parent);
    out.extend(first.iter().map(|s| s.to_string()));
    let rest: Vec<&str> = BASE_SCHEMA[2..]
        .iter()
        .copied()
        .filter(|s| !is_moved(s))
        .collect();
    // Grants last, in reverse order.
    let (grants, others): (Vec<&str>, Vec<&str>) = rest
        .into_iter()
        .partition(|s| s.starts_with("GRANT") || s.starts_with("REVOKE"));
    out.extend(others.iter().map(|s| s.to_string()));
    out.extend(grants.iter().rev().map(|s| s.to_string()));
    out.join(";\n") + ";\n"
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_databases_give_an_empty_diff_whatever_the_creation_order() {
    let pg = Pg::start().await;
    pg.exec("postgres", ROLES).await;
    pg.create_db("a", &base_schema()).await;
    pg.create_db("b", &base_schema_reordered()).await;
    let (mut a, mut b) = (pg.client("a").await, pg.client("b").await);

    let ma = extract_schema(&mut a).await.unwrap();
    let mb = extract_schema(&mut b).await.unwrap();
    let d = diff_schemas(&ma, &mb);
    assert!(
        d.is_empty(),
        "unexpected diff:\n{}",
        d.render(&RenderOptions::default())
    );
    assert_eq!(ma.to_ddl(), mb.to_ddl());

    // With data too, and through the one-call API: nothing differs (--exit-code → 0).
    let report = diff_databases(
        &mut a,
        &mut b,
        &DiffOptions {
            data: Some(Default::default()),
        },
    )
    .await
    .unwrap();
    assert!(report.is_empty(), "{report:#?}");
    let json = report.to_json(&RenderOptions::default());
    assert_eq!(json["identical"], true);
    assert_eq!(json["schema"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn extraction_is_deterministic_complete_and_leaves_the_session_alone() {
    let pg = Pg::start().await;
    pg.exec("postgres", ROLES).await;
    pg.create_db("a", &base_schema()).await;
    let mut a = pg.client("a").await;
    a.batch_execute("SET search_path = app, public")
        .await
        .unwrap();

    let first = extract_schema(&mut a).await.unwrap();
    let second = extract_schema(&mut a).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(first.to_ddl(), second.to_ddl());
    let path: String = a.query_one("SHOW search_path", &[]).await.unwrap().get(0);
    assert_eq!(
        path, "app, public",
        "the caller's session setting was changed"
    );
    // Not left inside a transaction either.
    a.batch_execute("BEGIN; COMMIT").await.unwrap();

    let ddl = first.to_ddl();
    eprintln!("{ddl}");

    // Every kind of object is extracted.
    let kinds: BTreeSet<ObjectKind> = first.objects().iter().map(|o| o.kind).collect();
    assert_eq!(kinds, ObjectKind::ALL.into_iter().collect());

    // System schemas and extension members are not.
    assert!(first
        .schemas
        .iter()
        .all(|s| s.name == "app" || s.name == "public"));
    assert!(
        !first.functions.iter().any(|f| f.name.contains("digest")),
        "pgcrypto's functions must not be listed"
    );
    assert!(first.extensions.iter().any(|e| e.name == "pgcrypto"));
    assert!(
        !first
            .functions
            .iter()
            .any(|f| f.name.starts_with("app.floatrange(")
                || f.name.starts_with("app.floatmultirange(")),
        "a range type's constructors are internal"
    );

    // Spot checks of the normalised DDL.
    let users = first.table("app.users").unwrap();
    assert_eq!(
        users.ddl(),
        "CREATE TABLE app.users (\n    \
         id bigint GENERATED ALWAYS AS IDENTITY (SEQUENCE NAME app.users_id_seq START WITH 1 \
         INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 CACHE 1) NOT NULL,\n    \
         name text NOT NULL,\n    \
         email app.email,\n    \
         mood app.mood DEFAULT 'ok'::app.mood,\n    \
         created timestamp with time zone DEFAULT now() NOT NULL,\n    \
         name_upper text GENERATED ALWAYS AS (upper(name)) STORED\n\
         );\n\
         ALTER TABLE app.users OWNER TO postgres;\n"
    );
    let orders = first.table("app.orders").unwrap().ddl();
    assert!(orders.contains("id integer DEFAULT nextval('app.orders_id_seq'::regclass) NOT NULL"));
    assert!(orders.contains("code text COLLATE pg_catalog.\"C\""));
    assert!(orders.contains("WITH (fillfactor=80)"));
    assert!(orders.contains("ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY;"));
    assert!(ddl.contains(
        "ALTER TABLE app.orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) \
         REFERENCES app.users(id) ON DELETE CASCADE;"
    ));
    assert!(ddl.contains("ADD CONSTRAINT orders_during_excl EXCLUDE USING gist (during WITH &&);"));
    assert!(ddl.contains("ADD CONSTRAINT orders_amount_check CHECK (amount >= 0::numeric);"));
    assert!(ddl.contains("ADD CONSTRAINT users_pkey PRIMARY KEY (id);"));
    assert!(ddl.contains(
        "CREATE INDEX orders_user_idx ON app.orders USING btree (user_id) WHERE (amount > (0)::numeric);"
    ));
    // Constraint-backing indexes are not listed as indexes.
    assert!(!first.indexes.iter().any(|i| i.name == "app.users_pkey"));
    assert!(ddl.contains("ALTER SEQUENCE app.orders_id_seq OWNED BY app.orders.id;"));
    assert!(ddl.contains(
        "CREATE SEQUENCE app.counter\n    AS bigint\n    START WITH 100\n    INCREMENT BY 5"
    ));
    assert!(ddl.contains("    CACHE 10\n    CYCLE;\n"));
    assert!(
        !first.sequences.iter().any(|s| s.name == "app.users_id_seq"),
        "identity sequences belong to their column"
    );
    assert!(ddl.contains("CREATE TYPE app.mood AS ENUM (\n    'sad',\n    'ok',\n    'happy'\n);"));
    assert!(ddl.contains("CREATE DOMAIN app.email AS text COLLATE pg_catalog.\"C\"\n    CONSTRAINT email_check CHECK"));
    assert!(ddl.contains(
        "CREATE TYPE app.pair AS (\n    a integer,\n    b text COLLATE pg_catalog.\"C\"\n);"
    ));
    assert!(ddl.contains("SUBTYPE = double precision"));
    assert!(ddl.contains("SUBTYPE_DIFF = float8mi"));
    assert!(ddl.contains("ALTER TABLE app.events ATTACH PARTITION app.events_2024 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"));
    assert!(ddl.contains("PARTITION BY RANGE (at)"));
    assert!(ddl.contains("CREATE UNLOGGED TABLE app.scratch"));
    assert!(ddl.contains("INHERITS (app.parent)"));
    assert!(ddl.contains("CREATE FOREIGN TABLE app.remote"));
    assert!(ddl.contains("SERVER ramify_srv\nOPTIONS (table_name=r);"));
    assert!(ddl.contains("CREATE VIEW app.active_users WITH (security_barrier=true) AS\n SELECT"));
    assert!(ddl.contains("CREATE MATERIALIZED VIEW app.order_totals AS"));
    assert!(
        ddl.contains("CREATE INDEX order_totals_idx ON app.order_totals USING btree (user_id);")
    );
    let add = first
        .functions
        .iter()
        .find(|f| f.name == "app.add(a integer, b integer)")
        .unwrap();
    assert!(add.definition.contains("SELECT a + b"));
    let kinds: Vec<_> = first
        .functions
        .iter()
        .map(|f| (f.name.as_str(), f.kind))
        .collect();
    assert!(kinds.contains(&("app.reset_counter()", FunctionKind::Procedure)));
    assert!(kinds.contains(&("app.total(integer)", FunctionKind::Aggregate)));
    assert!(ddl.contains("CREATE AGGREGATE app.total(integer) (\n    SFUNC = app.add,\n    STYPE = integer,\n    INITCOND = '0'\n);"));
    assert!(ddl.contains("CREATE TRIGGER users_touch BEFORE UPDATE ON app.users FOR EACH ROW EXECUTE FUNCTION app.touch();"));
    assert!(ddl.contains("ALTER TABLE app.orders DISABLE TRIGGER orders_touch_off;"));
    assert!(ddl.contains("CREATE POLICY own_orders ON app.orders\n    AS PERMISSIVE\n    FOR SELECT\n    TO ramify_diff_reader\n    USING ((user_id = 1));"));
    assert!(ddl.contains("GRANT USAGE ON SCHEMA app TO ramify_diff_reader;"));
    assert!(ddl.contains("GRANT SELECT ON TABLE app.users TO ramify_diff_reader;"));
    assert!(ddl.contains(
        "GRANT INSERT, SELECT ON TABLE app.users TO ramify_diff_writer WITH GRANT OPTION;"
    ));
    assert!(ddl.contains("GRANT SELECT (amount) ON TABLE app.orders TO ramify_diff_reader;"));
    assert!(ddl.contains("REVOKE EXECUTE ON FUNCTION app.add(a integer, b integer) FROM PUBLIC;"));
    assert!(ddl.contains(
        "GRANT EXECUTE ON FUNCTION app.add(a integer, b integer) TO ramify_diff_reader;"
    ));
    assert!(ddl.contains("GRANT USAGE ON SEQUENCE app.counter TO ramify_diff_writer;"));
    assert!(ddl.contains("GRANT USAGE ON TYPE app.mood TO ramify_diff_reader;"));
    assert!(matches!(
        first
            .types
            .iter()
            .find(|t| t.name == "app.email")
            .unwrap()
            .body,
        TypeBody::Domain { .. }
    ));
    // No OIDs leak into the text.
    assert!(!ddl.contains("OID"), "{ddl}");
}

#[tokio::test(flavor = "multi_thread")]
async fn added_column_new_index_changed_function_and_dropped_constraint_appear() {
    let pg = Pg::start().await;
    pg.exec("postgres", ROLES).await;
    pg.create_db("a", &base_schema()).await;
    pg.create_db("b", &base_schema()).await;
    pg.exec(
        "b",
        "ALTER TABLE app.users ADD COLUMN nickname text;
         CREATE INDEX users_name_idx ON app.users (name);
         CREATE OR REPLACE FUNCTION app.add(a integer, b integer) RETURNS integer
           LANGUAGE sql IMMUTABLE AS $$ SELECT a + b + 0 $$;
         ALTER TABLE app.orders DROP CONSTRAINT orders_amount_check;",
    )
    .await;
    let (mut a, mut b) = (pg.client("a").await, pg.client("b").await);
    let report = diff_databases(&mut a, &mut b, &DiffOptions::default())
        .await
        .unwrap();
    let d = &report.schema;
    let text = report.render(&RenderOptions {
        a_label: "main".into(),
        b_label: "feature".into(),
        ..Default::default()
    });
    eprintln!("{text}");
    let got: Vec<_> = d
        .changes
        .iter()
        .map(|c| (c.kind, c.name.as_str(), c.change))
        .collect();
    assert_eq!(
        got,
        vec![
            (ObjectKind::Table, "app.users", Change::Changed),
            (
                ObjectKind::Constraint,
                "app.orders.orders_amount_check",
                Change::Removed
            ),
            (ObjectKind::Index, "app.users_name_idx", Change::Added),
            (
                ObjectKind::Function,
                "app.add(a integer, b integer)",
                Change::Changed
            ),
        ],
        "{text}"
    );
    assert!(!report.is_empty());
    assert_eq!(
        d.find(ObjectKind::Table, "app.users")
            .unwrap()
            .columns
            .as_ref()
            .unwrap()
            .added,
        vec!["nickname".to_owned()]
    );
    assert!(text.starts_with("--- main\n+++ feature\n## table app.users (changed)\n@@ "));
    assert!(text.contains("\n-    name_upper text GENERATED ALWAYS AS (upper(name)) STORED\n"));
    assert!(text.contains(
        "\n+    name_upper text GENERATED ALWAYS AS (upper(name)) STORED,\n+    nickname text\n"
    ));
    assert!(text.contains("## constraint app.orders.orders_amount_check (removed)\n-ALTER TABLE app.orders ADD CONSTRAINT orders_amount_check CHECK (amount >= 0::numeric);\n"));
    assert!(text.contains("## index app.users_name_idx (added)\n+CREATE INDEX users_name_idx ON app.users USING btree (name);\n"));
    assert!(text.contains(
        "-AS $function$ SELECT a + b $function$;\n+AS $function$ SELECT a + b + 0 $function$;\n"
    ));

    // The JSON form.
    let json = report.to_json(&RenderOptions::default());
    assert_eq!(json["identical"], false);
    assert_eq!(json["summary"]["added"], 1);
    assert_eq!(json["summary"]["removed"], 1);
    assert_eq!(json["summary"]["changed"], 2);
    let list = json["schema"].as_array().unwrap();
    assert_eq!(list[2]["kind"], "index");
    assert_eq!(list[2]["change"], "added");
    assert!(list[2]["before"].is_null());
    assert!(list[2]["after"]
        .as_str()
        .unwrap()
        .starts_with("CREATE INDEX users_name_idx"));
    assert!(json.get("data").is_none());

    // And the other way round.
    let (ma, mb) = (
        extract_schema(&mut a).await.unwrap(),
        extract_schema(&mut b).await.unwrap(),
    );
    let back = diff_schemas(&mb, &ma);
    let kinds: Vec<_> = back.changes.iter().map(|c| c.change).collect();
    assert_eq!(
        kinds,
        vec![
            Change::Changed,
            Change::Added,
            Change::Removed,
            Change::Changed
        ]
    );
}
