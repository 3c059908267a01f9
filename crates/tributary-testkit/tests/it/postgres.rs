use anyhow::Result;
use sqlx::{Connection, PgConnection};
use tributary_testkit::{Postgres, TestDb, shared_postgres};

use crate::accepts;

async fn database_exists(name: &str) -> Result<bool> {
    let mut admin = PgConnection::connect(&shared_postgres().url("postgres")).await?;
    let found: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin)
        .await?;
    Ok(found)
}

#[tokio::test]
async fn select_one_on_a_test_db() -> Result<()> {
    let db = TestDb::create().await?;
    assert!(db.url().ends_with(&format!("/{}", db.name())), "{}", db.url());
    let mut conn = PgConnection::connect(db.url()).await?;
    let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
    assert_eq!(one, 1);
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(current, db.name());
    Ok(())
}

#[tokio::test]
async fn test_dbs_are_distinct_and_dropped() -> Result<()> {
    let a = TestDb::create().await?;
    let b = TestDb::create().await?;
    assert_ne!(a.name(), b.name());

    let mut conn_a = PgConnection::connect(a.url()).await?;
    sqlx::query("CREATE TABLE only_in_a (id int)")
        .execute(&mut conn_a)
        .await?;
    let mut conn_b = PgConnection::connect(b.url()).await?;
    let in_b: Option<String> = sqlx::query_scalar("SELECT to_regclass('only_in_a')::text")
        .fetch_one(&mut conn_b)
        .await?;
    assert_eq!(in_b, None);

    // An open connection must not keep the database alive: the drop forces it.
    let name = a.name().to_owned();
    assert!(database_exists(&name).await?);
    drop(a);
    assert!(!database_exists(&name).await?);
    drop(conn_a);
    Ok(())
}

#[tokio::test]
async fn table_survives_restart() -> Result<()> {
    let mut pg = tokio::task::spawn_blocking(Postgres::start).await??;
    let port = pg.port();
    let mut conn = PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE TABLE kept (v text)").execute(&mut conn).await?;
    sqlx::query("INSERT INTO kept VALUES ('before restart')")
        .execute(&mut conn)
        .await?;
    conn.close().await?;

    pg.restart().await?;
    assert_eq!(pg.port(), port);
    let mut conn = PgConnection::connect(&pg.url("postgres")).await?;
    let v: String = sqlx::query_scalar("SELECT v FROM kept").fetch_one(&mut conn).await?;
    assert_eq!(v, "before restart");
    conn.close().await?;

    pg.stop().await?;
    assert!(!accepts(port), "a stopped server refuses connections");
    drop(pg);
    Ok(())
}

#[tokio::test]
async fn start_in_keeps_the_cluster() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cluster = dir.path().join("pg");
    let path = cluster.clone();
    let pg = tokio::task::spawn_blocking(move || Postgres::start_in(&path, None)).await??;
    let port = pg.port();
    let mut conn = PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE TABLE kept (v int)").execute(&mut conn).await?;
    conn.close().await?;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    assert!(cluster.join("data/PG_VERSION").exists(), "dropping keeps the directory");

    let path = cluster.clone();
    let pg = tokio::task::spawn_blocking(move || Postgres::start_in(&path, Some(port))).await??;
    assert_eq!(pg.port(), port);
    let mut conn = PgConnection::connect(&pg.url("postgres")).await?;
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass('kept')::text")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(found.as_deref(), Some("kept"));
    conn.close().await?;
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    Ok(())
}
