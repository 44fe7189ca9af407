//! `--data`: exact counts against a real Postgres 15 (two databases on one server).

mod common;

use common::Pg;
use ramify_diff::{
    diff_data, diff_databases, DataDiffOptions, DiffOptions, KeyedCounts, RenderOptions,
    TableDataResult,
};

const SETUP: &str = "
    CREATE TABLE items (id int PRIMARY KEY, v text, n int);
    INSERT INTO items SELECT i, md5(i::text), i % 10 FROM generate_series(1, 1000) i;

    -- A text key (compared through its text form, byte order) with mixed case and
    -- non-ASCII, and a composite key of int and text.
    CREATE TABLE words (w text PRIMARY KEY, c int);
    INSERT INTO words SELECT w, length(w) FROM unnest(ARRAY[
        'apple', 'Apple', 'APPLE', 'banana', 'Ünïcode', 'zeta', 'Zeta', 'a b', 'a\tb', '',
        'x,y', '(paren)', '\"quoted\"', 'back\\slash', 'ñ', 'é', 'e', 'E']) w;
    CREATE TABLE pairs (a int, b text, val numeric, PRIMARY KEY (a, b));
    INSERT INTO pairs SELECT i % 50, 'k' || (i / 50), i * 1.5 FROM generate_series(0, 499) i;
    CREATE TABLE stamps (at timestamptz PRIMARY KEY, note text);
    INSERT INTO stamps SELECT '2024-01-01 00:00+00'::timestamptz + i * interval '1 hour', 'n'
      FROM generate_series(1, 100) i;

    CREATE TABLE log (msg text);            -- no primary key
    INSERT INTO log SELECT 'm' || i FROM generate_series(1, 10) i;
    CREATE TABLE same (id bigint PRIMARY KEY, v text);
    INSERT INTO same SELECT i, 'v' FROM generate_series(1, 300) i;
    CREATE TABLE widened (id int PRIMARY KEY, v text);
    INSERT INTO widened SELECT i, 'v' FROM generate_series(1, 50) i;
    CREATE TABLE dropped_in_b (id int PRIMARY KEY);
    INSERT INTO dropped_in_b SELECT generate_series(1, 5);
    CREATE TABLE rekeyed (id int PRIMARY KEY, other int NOT NULL);
    INSERT INTO rekeyed SELECT i, i FROM generate_series(1, 20) i;

    -- Partitions are compared one by one, the partitioned parent is not; an inheritance
    -- parent is read with ONLY so its children's rows are not counted twice.
    CREATE TABLE ev (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
    CREATE TABLE ev_2024 PARTITION OF ev FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
    CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
    INSERT INTO ev SELECT i, '2024-06-01'::date + i FROM generate_series(1, 400) i;
    CREATE TABLE base (id int PRIMARY KEY);
    CREATE TABLE derived (extra int) INHERITS (base);
    INSERT INTO base SELECT generate_series(1, 3);
    INSERT INTO derived SELECT generate_series(100, 104), 0;
";

/// In B: delete 7, update 11 other rows, insert 13 — and the other tables' changes.
const CHANGES_IN_B: &str = "
    DELETE FROM items WHERE id IN (3, 100, 101, 500, 998, 999, 1000);
    UPDATE items SET n = n + 1 WHERE id IN (1, 2, 4, 50, 102, 250, 501, 700, 800, 900, 997);
    -- An update that writes the same values is not a change.
    UPDATE items SET v = v WHERE id BETWEEN 10 AND 20;
    INSERT INTO items SELECT i, 'new', 0 FROM generate_series(1001, 1013) i;

    DELETE FROM words WHERE w IN ('Apple', 'a\tb');
    UPDATE words SET c = -1 WHERE w IN ('', 'Ünïcode', 'back\\slash');
    INSERT INTO words VALUES ('aPPle', 5), ('Ω', 1), ('0', 1);

    DELETE FROM pairs WHERE a = 7;                      -- 10 rows
    UPDATE pairs SET val = 0 WHERE b = 'k3' AND a < 5;   -- 5 rows
    INSERT INTO pairs VALUES (7, 'zz', 1), (1000, 'k0', 2);

    UPDATE stamps SET note = 'changed' WHERE at = '2024-01-01 05:00+00';

    INSERT INTO log VALUES ('m11'), ('m12');
    ALTER TABLE widened ADD COLUMN extra int DEFAULT 42;
    DROP TABLE dropped_in_b;
    CREATE TABLE only_b (id int);
    INSERT INTO only_b VALUES (1), (2);
    ALTER TABLE rekeyed DROP CONSTRAINT rekeyed_pkey, ADD PRIMARY KEY (other);

    DELETE FROM ev WHERE id IN (1, 2);          -- in ev_2024
    INSERT INTO ev VALUES (1000, '2025-03-01');  -- in ev_2025
    INSERT INTO derived VALUES (105, 0);
    DELETE FROM base WHERE id = 1;
";

fn keyed(r: &TableDataResult) -> &KeyedCounts {
    match r {
        TableDataResult::ByKey(k) => k,
        other => panic!("expected a keyed comparison, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_are_exact_for_known_inserts_updates_and_deletes() {
    let pg = Pg::start().await;
    pg.create_db("a", SETUP).await;
    pg.create_db("b", SETUP).await;
    pg.exec("b", CHANGES_IN_B).await;
    let (mut a, mut b) = (pg.client("a").await, pg.client("b").await);
    // Sessions with different settings must not matter (the diff sets its own).
    a.batch_execute("SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'")
        .await
        .unwrap();

    // Small batches: the merge crosses many batch boundaries on both sides.
    let d = diff_data(&mut a, &mut b, &DataDiffOptions { batch_rows: 64 })
        .await
        .unwrap();
    let text = d.render(&RenderOptions::default());
    eprintln!("{text}");

    let items = keyed(&d.table("public.items").unwrap().result);
    assert_eq!(
        (items.only_in_a, items.only_in_b, items.changed),
        (7, 13, 11),
        "{items:?}"
    );
    assert_eq!((items.rows_a, items.rows_b), (1000, 1006));
    assert_eq!(items.key, vec!["id".to_owned()]);
    assert!(items.notes.is_empty());

    let words = keyed(&d.table("public.words").unwrap().result);
    assert_eq!((words.only_in_a, words.only_in_b, words.changed), (2, 3, 3));
    let pairs = keyed(&d.table("public.pairs").unwrap().result);
    assert_eq!(
        (pairs.only_in_a, pairs.only_in_b, pairs.changed),
        (10, 2, 5)
    );
    assert_eq!(pairs.key, vec!["a".to_owned(), "b".to_owned()]);
    let stamps = keyed(&d.table("public.stamps").unwrap().result);
    assert_eq!(
        (stamps.only_in_a, stamps.only_in_b, stamps.changed),
        (0, 0, 1)
    );

    let same = d.table("public.same").unwrap();
    assert!(!same.differs());
    assert_eq!(keyed(&same.result).rows_a, 300);

    // A column added in B: rows are compared on the common columns, and it says so.
    let widened = keyed(&d.table("public.widened").unwrap().result);
    assert_eq!(
        (widened.only_in_a, widened.only_in_b, widened.changed),
        (0, 0, 0)
    );
    assert_eq!(
        widened.notes,
        vec!["rows compared on the 2 common columns; only in B: extra".to_owned()]
    );

    assert_eq!(
        d.table("public.log").unwrap().result,
        TableDataResult::RowCounts {
            rows_a: 10,
            rows_b: 12,
            reason: "no primary key".into()
        }
    );
    assert!(matches!(
        &d.table("public.rekeyed").unwrap().result,
        TableDataResult::RowCounts { rows_a: 20, rows_b: 20, reason }
            if reason == "primary keys differ: (id integer) vs (other integer)"
    ));
    assert_eq!(
        d.table("public.dropped_in_b").unwrap().result,
        TableDataResult::OnlyInA { rows_a: 5 }
    );
    assert_eq!(
        d.table("public.only_b").unwrap().result,
        TableDataResult::OnlyInB { rows_b: 2 }
    );

    assert!(
        d.table("public.ev").is_none(),
        "partitioned parents are not read"
    );
    let ev24 = keyed(&d.table("public.ev_2024").unwrap().result);
    assert_eq!((ev24.only_in_a, ev24.only_in_b, ev24.changed), (2, 0, 0));
    let ev25 = keyed(&d.table("public.ev_2025").unwrap().result);
    assert_eq!((ev25.only_in_a, ev25.only_in_b, ev25.changed), (0, 1, 0));
    assert_eq!(ev24.rows_a + ev25.rows_a, 400);
    // ONLY: the parent's own rows, not its child's.
    let base = keyed(&d.table("public.base").unwrap().result);
    assert_eq!((base.rows_a, base.rows_b, base.only_in_a), (3, 2, 1));
    // Children do not inherit the primary key: row counts.
    assert!(matches!(
        d.table("public.derived").unwrap().result,
        TableDataResult::RowCounts {
            rows_a: 5,
            rows_b: 6,
            ..
        }
    ));

    assert!(!d.is_empty());
    assert!(text.contains(
        "public.items (key id): 7 only in a, 13 only in b, 11 changed; 1000 → 1006 rows\n"
    ));
    assert!(text.contains("public.log (no primary key): 10 → 12 rows\n"));
    assert!(text.contains("public.dropped_in_b: only in a (5 rows)\n"));
    assert!(!text.contains("public.same"));

    // Same counts with the default batch size, and through the one-call API.
    let report = diff_databases(
        &mut a,
        &mut b,
        &DiffOptions {
            data: Some(DataDiffOptions::default()),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.data.as_ref().unwrap(), &d);
    assert!(!report.is_empty());
    let json = report.to_json(&RenderOptions::default());
    let items_json = json["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "public.items")
        .unwrap();
    assert_eq!(items_json["comparison"], "by_key");
    assert_eq!(items_json["only_in_a"], 7);
    assert_eq!(items_json["only_in_b"], 13);
    assert_eq!(items_json["changed"], 11);

    // The sessions are usable and unchanged afterwards.
    let tz: String = a.query_one("SHOW TimeZone", &[]).await.unwrap().get(0);
    assert_eq!(tz, "Asia/Tokyo");

    // Reversed sides swap the counts.
    let back = diff_data(&mut b, &mut a, &DataDiffOptions::default())
        .await
        .unwrap();
    let items = keyed(&back.table("public.items").unwrap().result);
    assert_eq!(
        (items.only_in_a, items.only_in_b, items.changed),
        (13, 7, 11)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_data_is_empty_and_memory_stays_bounded_on_a_larger_table() {
    let pg = Pg::start().await;
    let big = "CREATE TABLE big (id bigint PRIMARY KEY, payload text);
               INSERT INTO big SELECT i, repeat('x', 100) FROM generate_series(1, 200000) i;
               CREATE TABLE big_text (k text PRIMARY KEY);
               INSERT INTO big_text SELECT md5(i::text) FROM generate_series(1, 50000) i;";
    pg.create_db("a", big).await;
    pg.create_db("b", big).await;
    let (mut a, mut b) = (pg.client("a").await, pg.client("b").await);
    let d = diff_data(&mut a, &mut b, &DataDiffOptions::default())
        .await
        .unwrap();
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(
        keyed(&d.table("public.big").unwrap().result).rows_a,
        200_000
    );
    assert_eq!(
        keyed(&d.table("public.big_text").unwrap().result).rows_b,
        50_000
    );

    pg.exec("b", "UPDATE big SET payload = 'y' WHERE id % 1000 = 0")
        .await;
    let d = diff_data(&mut a, &mut b, &DataDiffOptions::default())
        .await
        .unwrap();
    assert_eq!(keyed(&d.table("public.big").unwrap().result).changed, 200);
}
