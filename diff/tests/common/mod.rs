//! A real Postgres 15 for one test (run as the unprivileged `postgres` user on a
//! temporary directory, stopped and deleted on drop), with helpers to create databases.
#![allow(dead_code)]

use std::os::unix::fs::DirBuilderExt;

use ramify_compute::{PgBin, PgUser};
use ramify_testkit::{Compute, Scratch};
use tokio_postgres::Client;

pub struct Pg {
    pub compute: Compute,
    // Dropped after the compute: the data directory lives in it.
    _scratch: Scratch,
}

impl Pg {
    pub async fn start() -> Pg {
        let bin = PgBin::find(None).expect("Postgres installed (apt-get install postgresql-15)");
        let user = PgUser::resolve(None).expect("a user to run Postgres as");
        let scratch = Scratch::plain().expect("scratch directory");
        let pgdata = scratch.path().join("pgdata");
        let run = scratch.path().join("run");
        for dir in [&pgdata, &run] {
            std::fs::DirBuilder::new().mode(0o700).create(dir).unwrap();
            user.chown(dir).unwrap();
        }
        let compute = Compute::start(&bin, &user, &pgdata, &run, "true", true, &[])
            .await
            .expect("start Postgres");
        Pg {
            compute,
            _scratch: scratch,
        }
    }

    /// Creates database `name` and runs `sql` in it.
    pub async fn create_db(&self, name: &str, sql: &str) {
        self.compute
            .execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        self.exec(name, sql).await;
    }

    pub async fn exec(&self, db: &str, sql: &str) {
        if sql.trim().is_empty() {
            return;
        }
        self.client(db)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("in {db}: {e:?}\n{sql}"));
    }

    pub async fn client(&self, db: &str) -> Client {
        ramify_diff::connect(&self.compute.conn_str_db(db))
            .await
            .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
    }
}

/// Roles are cluster-wide: created once per server, before the databases.
pub const ROLES: &str = "CREATE ROLE ramify_diff_reader; CREATE ROLE ramify_diff_writer;";

/// A schema using every kind of object the extraction knows, in dependency order.
pub const BASE_SCHEMA: &[&str] = &[
    "CREATE EXTENSION pgcrypto",
    "CREATE SCHEMA app",
    "CREATE TYPE app.mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN app.email AS text COLLATE \"C\" CHECK (VALUE LIKE '%@%') \
     CONSTRAINT email_len CHECK (length(VALUE) < 200)",
    "CREATE TYPE app.pair AS (a integer, b text COLLATE \"C\")",
    "CREATE TYPE app.floatrange AS RANGE (subtype = float8, subtype_diff = float8mi)",
    "CREATE SEQUENCE app.counter START 100 INCREMENT 5 CACHE 10 CYCLE",
    "CREATE TABLE app.users (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        name text NOT NULL CHECK (name <> ''),
        email app.email UNIQUE,
        mood app.mood DEFAULT 'ok',
        created timestamptz NOT NULL DEFAULT now(),
        name_upper text GENERATED ALWAYS AS (upper(name)) STORED
    )",
    "CREATE TABLE app.orders (
        id serial PRIMARY KEY,
        user_id bigint REFERENCES app.users (id) ON DELETE CASCADE,
        amount numeric(10,2) NOT NULL CHECK (amount >= 0),
        during tstzrange,
        code text COLLATE \"C\",
        EXCLUDE USING gist (during WITH &&)
    ) WITH (fillfactor = 80)",
    "CREATE INDEX orders_user_idx ON app.orders (user_id) WHERE amount > 0",
    "CREATE UNIQUE INDEX orders_code_idx ON app.orders (lower(code))",
    "CREATE TABLE app.events (id int, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at)",
    "CREATE TABLE app.events_2024 PARTITION OF app.events \
     FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
    "CREATE UNLOGGED TABLE app.scratch (x int)",
    "CREATE TABLE app.parent (x int)",
    "CREATE TABLE app.child (extra int) INHERITS (app.parent)",
    "CREATE FOREIGN DATA WRAPPER ramify_dummy",
    "CREATE SERVER ramify_srv FOREIGN DATA WRAPPER ramify_dummy",
    "CREATE FOREIGN TABLE app.remote (a int, b text) SERVER ramify_srv OPTIONS (table_name 'r')",
    "CREATE VIEW app.active_users WITH (security_barrier) AS \
     SELECT id, name FROM app.users WHERE mood <> 'sad'",
    "CREATE MATERIALIZED VIEW app.order_totals AS \
     SELECT user_id, sum(amount) AS total FROM app.orders GROUP BY user_id",
    "CREATE INDEX order_totals_idx ON app.order_totals (user_id)",
    "CREATE FUNCTION app.add(a integer, b integer) RETURNS integer LANGUAGE sql IMMUTABLE \
     AS $$ SELECT a + b $$",
    "CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql \
     AS $$ BEGIN NEW.created := now(); RETURN NEW; END $$",
    "CREATE PROCEDURE app.reset_counter() LANGUAGE sql AS $$ SELECT setval('app.counter', 100) $$",
    "CREATE AGGREGATE app.total(integer) (SFUNC = app.add, STYPE = integer, INITCOND = '0')",
    "CREATE TRIGGER users_touch BEFORE UPDATE ON app.users \
     FOR EACH ROW EXECUTE FUNCTION app.touch()",
    "CREATE TRIGGER orders_touch_off BEFORE UPDATE ON app.orders \
     FOR EACH ROW EXECUTE FUNCTION app.touch()",
    "ALTER TABLE app.orders DISABLE TRIGGER orders_touch_off",
    "ALTER TABLE app.orders ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY own_orders ON app.orders FOR SELECT TO ramify_diff_reader USING (user_id = 1)",
    "GRANT USAGE ON SCHEMA app TO ramify_diff_reader",
    "GRANT SELECT ON app.users TO ramify_diff_reader",
    "GRANT SELECT, INSERT ON app.users TO ramify_diff_writer WITH GRANT OPTION",
    "GRANT SELECT (id, amount) ON app.orders TO ramify_diff_reader",
    "GRANT USAGE ON SEQUENCE app.counter TO ramify_diff_writer",
    "REVOKE EXECUTE ON FUNCTION app.add(integer, integer) FROM PUBLIC",
    "GRANT EXECUTE ON FUNCTION app.add(integer, integer) TO ramify_diff_reader",
    "GRANT USAGE ON TYPE app.mood TO ramify_diff_reader",
];

/// The base schema as one script.
pub fn base_schema() -> String {
    BASE_SCHEMA.join(";\n") + ";\n"
}
