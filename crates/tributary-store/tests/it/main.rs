//! The store against a real PostgreSQL (one server per test process, one
//! fresh database per test).

use tributary_store::Transient as _;
use tributary_store::{Row, RowValue, Store, StoreConfig, StoreError};
use tributary_testkit::TestDb;

async fn store(db: &TestDb) -> Store {
    let store = Store::connect_lazy(&StoreConfig {
        max_connections: 2,
        ..StoreConfig::new(db.url())
    })
    .expect("pool");
    store.migrate().await.expect("migrations apply");
    store
}

fn row(device: &str, metric: &str, time_us: i64, value: RowValue) -> Row {
    Row {
        device_id: device.into(),
        metric: metric.into(),
        time_us,
        value,
        unit: None,
        latitude: Some(50.75920624235248),
        longitude: Some(45.13887627405175),
        attributes_json: Some(r#"{"context":"c"}"#.into()),
        source: "test".into(),
        raw_msg_id: "raw-1".into(),
        ingested_at_us: time_us + 1_000,
    }
}

const T: i64 = 1_506_775_817_765_000; // 2017-09-30T12:50:17.765Z

#[tokio::test]
async fn a_redelivered_batch_changes_nothing() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    let batch = vec![
        row("d", "a", T, RowValue::Number(27.1245)),
        row("d", "b", T, RowValue::Text("on".into())),
        row("d", "c", T, RowValue::Bool(true)),
        // The same key twice inside one batch (one ingestion) is one row:
        // the later one.
        row("d", "a", T, RowValue::Number(99.0)),
    ];
    assert_eq!(store.write_batch(&batch).await.unwrap().added, 3);
    assert_eq!(store.write_batch(&batch).await.unwrap().added, 0);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(count, 3);

    let points = store.read_series("d", "a", T - 1, T + 1, 10).await.unwrap();
    assert_eq!(points.len(), 1);
    assert_eq!(
        points[0].value,
        RowValue::Number(99.0),
        "the batch's later value of the key"
    );
    assert_eq!(points[0].time_us, T);
    assert_eq!(points[0].latitude, Some(50.75920624235248));
    assert_eq!(points[0].attributes["context"], "c");
    assert_eq!(points[0].ingested_at_us, T + 1_000);
    let text = store.read_series("d", "b", 0, T + 1, 10).await.unwrap();
    assert_eq!(text[0].value, RowValue::Text("on".into()));
    let boolean = store.read_series("d", "c", 0, T + 1, 10).await.unwrap();
    assert_eq!(boolean[0].value, RowValue::Bool(true));
}

#[tokio::test]
async fn partitions_are_created_per_month_on_demand() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    let months = [T, 1_514_764_800_000_000 /* 2018-01-01 */, 0 /* 1970-01-01 */];
    let batch: Vec<Row> = months
        .iter()
        .map(|&t| row("d", "m", t, RowValue::Number(1.0)))
        .collect();
    assert_eq!(store.write_batch(&batch).await.unwrap().added, 3);
    let partitions: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'metric_events' ORDER BY 1",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        partitions,
        [
            "metric_events_p197001",
            "metric_events_p201709",
            "metric_events_p201801"
        ]
    );

    // A second store (another replica) finds them and writes without error.
    let other = self::store(&db).await;
    assert_eq!(
        other
            .write_batch(&[row("e", "m", T, RowValue::Number(2.0))])
            .await
            .unwrap()
            .added,
        1
    );
}

#[tokio::test]
async fn migrations_are_idempotent_and_times_out_of_range_are_refused() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    store.migrate().await.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM tributary_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(versions, 3, "the events table and its two rollup tables");
    let error = store
        .write_batch(&[row("d", "m", -1, RowValue::Number(1.0))])
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::TimeOutOfRange(-1)), "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn an_unreachable_database_is_a_transient_error() {
    let port = tributary_testkit::free_port().unwrap();
    let store = Store::connect_lazy(&StoreConfig {
        max_connections: 1,
        ..StoreConfig::new(format!("postgres://postgres@127.0.0.1:{port}/none"))
    })
    .unwrap();
    let error = store
        .write_batch(&[row("d", "m", T, RowValue::Number(1.0))])
        .await
        .unwrap_err();
    assert!(error.is_transient(), "{error:?}");
}

#[tokio::test]
async fn a_batch_of_stored_and_new_rows_inserts_only_the_new() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    let first: Vec<Row> = (0..10)
        .map(|i| row("d", "m", T + i, RowValue::Number(i as f64)))
        .collect();
    assert_eq!(
        store.write_batch(&first).await.unwrap().added,
        10,
        "all new: the COPY path"
    );
    // Five stored keys (with other values) and five new ones.
    let second: Vec<Row> = (5..15).map(|i| row("d", "m", T + i, RowValue::Number(-1.0))).collect();
    assert_eq!(
        store.write_batch(&second).await.unwrap().added,
        5,
        "the stored five are skipped"
    );
    let (count, changed): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE value_num = -1 AND time < to_timestamp($1 / 1e6)) FROM metric_events",
    )
    .bind((T + 5) as f64 + 5.0)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((count, changed), (15, 0), "no stored row was overwritten");
}

#[tokio::test]
async fn a_value_the_database_cannot_hold_is_a_permanent_error() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    let error = store
        .write_batch(&[
            row("d", "ok", T, RowValue::Number(1.0)),
            row("d", "nul", T, RowValue::Text("a\0b".into())),
        ])
        .await
        .unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("0x00"), "{error}");
}

/// The partitions of `table`, by name.
async fn partitions(store: &Store, table: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
    )
    .bind(table)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// The `_pYYYYMM` suffix of the month holding `time_us`.
fn month_suffix(time_us: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(time_us / 1_000_000).unwrap();
    format!("_p{:04}{:02}", t.year(), u8::from(t.month()))
}

#[tokio::test]
async fn retention_drops_whole_old_partitions_per_table_and_never_a_busy_or_current_one() {
    const DAY: i64 = 86_400_000_000;
    let db = TestDb::create().await.unwrap();
    let keep_all = store(&db).await;
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    // The current month, one about 75 days back, and September 2017.
    let times = [now - 60_000_000, now - 75 * DAY, T];
    let batch: Vec<Row> = times.iter().map(|&t| row("d", "m", t, RowValue::Number(1.0))).collect();
    assert_eq!(keep_all.write_batch(&batch).await.unwrap().added, 3);
    let [current, recent, old] = times.map(month_suffix);
    let names = |table: &str, months: &[&String]| -> Vec<String> {
        let mut names: Vec<String> = months.iter().map(|m| format!("{table}{m}")).collect();
        names.sort();
        names
    };
    let all = [&current, &recent, &old];
    assert_eq!(
        partitions(&keep_all, "metric_events").await,
        names("metric_events", &all)
    );

    // Rows kept 30 days, minute buckets 100 days, hour buckets for ever.
    let day = std::time::Duration::from_secs(86_400);
    let store = Store::connect_lazy(&StoreConfig {
        max_connections: 2,
        retention: tributary_store::Retention {
            rows: Some(30 * day),
            minutes: Some(100 * day),
            hours: None,
        },
        ..StoreConfig::new(db.url())
    })
    .unwrap();
    let (horizon, reason) = store.oldest_writable().unwrap();
    assert!(horizon > now - 31 * DAY && reason == "beyond_retention");

    // A writer still busy in an expired partition holds it: the round gives
    // up after its lock timeout and drops nothing.
    let mut busy = keep_all.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO metric_events (device_id, metric, time, ingested_at) VALUES ('w', 'm', to_timestamp($1 / 1e6), now())")
        .bind(T as f64)
        .execute(&mut *busy)
        .await
        .unwrap();
    let error = store.apply_retention(now).await.unwrap_err();
    assert!(error.to_string().contains("lock timeout"), "{error}");
    assert_eq!(partitions(&store, "metric_events").await.len(), 3, "nothing dropped");
    busy.commit().await.unwrap();

    let mut dropped = store.apply_retention(now).await.unwrap();
    dropped.sort();
    let mut expected = names("metric_events", &[&recent, &old]);
    expected.extend(names("metric_events_1m", &[&old]));
    expected.sort();
    assert_eq!(dropped, expected);
    assert_eq!(
        partitions(&store, "metric_events").await,
        names("metric_events", &[&current])
    );
    assert_eq!(
        partitions(&store, "metric_events_1m").await,
        names("metric_events_1m", &[&current, &recent])
    );
    assert_eq!(
        partitions(&store, "metric_events_1h").await,
        names("metric_events_1h", &all)
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM metric_events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "only the current month's row is left");
    assert!(
        store.apply_retention(now).await.unwrap().is_empty(),
        "a second round finds nothing"
    );

    // A point older than the minute level keeps goes into the hour level
    // only (the rows themselves are the sink's to refuse).
    assert_eq!(
        store
            .write_batch(&[row("late", "m", T, RowValue::Number(2.0))])
            .await
            .unwrap()
            .added,
        1
    );
    let (minutes, hours): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM metric_events_1m WHERE device_id = 'late'), \
         (SELECT count(*) FROM metric_events_1h WHERE device_id = 'late')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!((minutes, hours), (0, 1));
}

/// Each statement of a dialect's script: its title and text.
fn statements(dialect: tributary_store::Dialect) -> Vec<(String, String)> {
    tributary_store::sql::script("metric_events", dialect)
        .split("\n\n-- ")
        .skip(1)
        .map(|chunk| {
            let (title, statement) = chunk.split_once('\n').unwrap();
            (title.to_owned(), statement.trim().trim_end_matches(';').to_owned())
        })
        .collect()
}

#[tokio::test]
async fn postgresql_runs_every_part_of_the_greenplum_dialect_it_understands() {
    use sqlx::Executor as _;
    let db = TestDb::create().await.unwrap();
    // One connection: the staging table is the session's.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(db.url())
        .await
        .unwrap();
    let mut ran = 0;
    let mut greenplum_only = Vec::new();
    for (title, statement) in statements(tributary_store::Dialect::Greenplum) {
        let Some(portable) = tributary_store::Dialect::portable_part(&statement) else {
            // PostgreSQL refuses what is Greenplum's alone.
            pool.execute(sqlx::AssertSqlSafe(statement.clone()))
                .await
                .expect_err(&title);
            greenplum_only.push(title);
            continue;
        };
        if portable.starts_with("COPY ") {
            continue; // The same text in both dialects; every write runs it.
        }
        if title.starts_with("retention: detach") || title.starts_with("retention: drop") {
            continue; // Runs in the retention test, on old partitions.
        }
        // Each in its own transaction (some only run inside one).
        let mut tx = pool.begin().await.unwrap();
        if portable.contains("$1") {
            // Parsed and planned against the tables made so far.
            (&mut *tx)
                .prepare(sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(portable)))
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}"));
        } else {
            (&mut *tx)
                .execute(sqlx::AssertSqlSafe(portable))
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}"));
        }
        tx.commit().await.unwrap();
        ran += 1;
    }
    assert!(ran >= 20, "{ran} statements");
    assert_eq!(greenplum_only, ["columnar: an old events partition"]);

    // The tables Greenplum's definitions make take the writes every
    // dialect shares: recorded as migrated, a store writes into them.
    for version in 1..=3 {
        sqlx::query(tributary_store::sql::RECORD_MIGRATION)
            .bind("metric_events")
            .bind(version)
            .execute(&pool)
            .await
            .unwrap();
    }
    let store = store(&db).await;
    let batch: Vec<Row> = (0..5)
        .map(|i| row("gp", "m", T + i, RowValue::Number(i as f64)))
        .collect();
    assert_eq!(store.write_batch(&batch).await.unwrap().added, 5);
    assert_eq!(store.write_batch(&batch).await.unwrap().added, 0);
    assert!(store.check_rollups(10).await.unwrap().is_empty());
}

#[test]
fn greenplum_settings_are_checked() {
    let config = StoreConfig {
        columnar_after: Some(std::time::Duration::from_secs(60 * 86_400)),
        ..StoreConfig::new("postgres://h/db")
    };
    assert_eq!(config.problems(), ["--columnar-after needs --dialect greenplum"]);
    let greenplum = StoreConfig {
        dialect: tributary_store::Dialect::Greenplum,
        ..config
    };
    assert!(greenplum.problems().is_empty());
}

/// The buckets of a rollup table, as text, and as SQL computes them from
/// the rows alone.
async fn buckets_kept_and_computed(store: &Store, unit: &str) -> (Vec<String>, Vec<String>) {
    let table = if unit == "minute" {
        "metric_events_1m"
    } else {
        "metric_events_1h"
    };
    let kept = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT concat_ws(' ', device_id, metric, bucket, count, sum, min, max, first_time, first_value, \
         last_time, last_value) FROM {table} ORDER BY device_id, metric, bucket"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let computed = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT concat_ws(' ', device_id, metric, b, count(*), sum(value_num), min(value_num), max(value_num), \
         (array_agg(time ORDER BY time))[1], (array_agg(value_num ORDER BY time))[1], \
         (array_agg(time ORDER BY time DESC))[1], (array_agg(value_num ORDER BY time DESC))[1]) \
         FROM (SELECT *, date_trunc('{unit}', time) AS b FROM metric_events WHERE value_num IS NOT NULL) e \
         GROUP BY device_id, metric, b ORDER BY device_id, metric, b"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    (kept, computed)
}

#[tokio::test]
async fn a_later_ingestion_corrects_a_stored_value_and_its_buckets() {
    let db = TestDb::create().await.unwrap();
    let store = store(&db).await;
    let at = |i: i64, value: RowValue, ingested: i64| Row {
        ingested_at_us: ingested,
        ..row("d", "m", T + i * 1_000_000, value)
    };
    // Ten points; the bucket's minimum is point 3, its last point 9.
    let first: Vec<Row> = (0..10)
        .map(|i| at(i, RowValue::Number(if i == 3 { -50.0 } else { i as f64 }), T + 100))
        .collect();
    assert_eq!(store.write_batch(&first).await.unwrap().added, 10);

    // Later: point 3 corrected (the old minimum leaves the bucket), point 9
    // becomes text (the bucket's last point changes), one new point; point
    // 5 sent again with its stored value.
    let correction = vec![
        at(3, RowValue::Number(30.0), T + 200),
        at(9, RowValue::Text("broken".into()), T + 200),
        at(10, RowValue::Number(10.0), T + 200),
        at(5, RowValue::Number(5.0), T + 200),
    ];
    let written = store.write_batch(&correction).await.unwrap();
    assert_eq!(
        written,
        tributary_store::Written { added: 1, corrected: 2 },
        "point 5 is unchanged"
    );
    let value = |i: i64| {
        let store = &store;
        async move {
            store
                .read_series("d", "m", T + i * 1_000_000, T + i * 1_000_000 + 1, 1)
                .await
                .unwrap()[0]
                .value
                .clone()
        }
    };
    assert_eq!(value(3).await, RowValue::Number(30.0));
    assert_eq!(value(9).await, RowValue::Text("broken".into()));
    for unit in ["minute", "hour"] {
        let (kept, computed) = buckets_kept_and_computed(&store, unit).await;
        assert_eq!(kept, computed, "{unit} buckets after the correction");
    }
    let (minutes, _) = buckets_kept_and_computed(&store, "minute").await;
    assert!(
        minutes.iter().any(|b| b.contains(" 0 30 ")),
        "min 0, max 30: {minutes:?}"
    );

    // The correction again (a redelivery), and the first ingestion arriving
    // late: neither changes anything; the latest ingestion stays.
    assert_eq!(
        store.write_batch(&correction).await.unwrap(),
        tributary_store::Written::default()
    );
    assert_eq!(
        store.write_batch(&first).await.unwrap(),
        tributary_store::Written::default()
    );
    assert_eq!(value(3).await, RowValue::Number(30.0));
    for unit in ["minute", "hour"] {
        let (kept, computed) = buckets_kept_and_computed(&store, unit).await;
        assert_eq!(kept, computed, "{unit} buckets after the redeliveries");
    }
    assert!(store.check_rollups(100).await.unwrap().is_empty());
}
