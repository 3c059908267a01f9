//! One PostgreSQL server per test process, one fresh database per test.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, ensure};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

use crate::postgres::Postgres;

static SHARED: OnceLock<Result<Postgres, String>> = OnceLock::new();

/// One PostgreSQL server per test process, started on first use and shut
/// down when the process exits (statics are never dropped, so an exit hook
/// does it).
///
/// # Panics
///
/// When the server cannot be started; [`TestDb::create`] reports the same
/// failure as an error instead.
pub fn shared_postgres() -> &'static Postgres {
    try_shared_postgres().unwrap_or_else(|e| panic!("{e:#}"))
}

/// A failed start is remembered, so every test fails fast with the same
/// message instead of running `initdb` again.
fn try_shared_postgres() -> Result<&'static Postgres> {
    let shared = SHARED.get_or_init(|| {
        let pg = Postgres::start().map_err(|e| format!("starting the shared PostgreSQL: {e:#}"))?;
        // On error `pg` drops here, which stops it.
        register_exit_hook().map_err(|e| format!("{e:#}"))?;
        Ok(pg)
    });
    shared.as_ref().map_err(|e| anyhow!("{e}"))
}

#[expect(
    unsafe_code,
    reason = "atexit(3) is the only hook that runs when the test harness exits"
)]
fn register_exit_hook() -> Result<()> {
    // SAFETY: the callback is a plain `extern "C" fn()` that catches panics,
    // so nothing unwinds into libc.
    let rc = unsafe { libc::atexit(stop_shared_postgres) };
    ensure!(rc == 0, "atexit() refused to register the shared PostgreSQL's shutdown");
    Ok(())
}

extern "C" fn stop_shared_postgres() {
    let stopped = std::panic::catch_unwind(|| {
        if let Some(Ok(pg)) = SHARED.get() {
            pg.shut_down_shared();
        }
    });
    if stopped.is_err() {
        tracing::warn!("panic while stopping the shared PostgreSQL at exit");
    }
}

/// A fresh database on the [`shared_postgres`] server for one test, dropped
/// (`DROP DATABASE … WITH (FORCE)`) when this value drops.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create() -> Result<Self> {
        // The first call runs initdb (about a second): off the async threads.
        let pg = tokio::task::spawn_blocking(try_shared_postgres)
            .await
            .context("starting the shared PostgreSQL")??;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin_url = pg.url("postgres");
        let mut conn = PgConnection::connect(&admin_url)
            .await
            .with_context(|| format!("connecting to {admin_url}"))?;
        // The name is ours (letters, digits, underscores), so formatting it in is safe.
        sqlx::query(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        if let Err(e) = conn.close().await {
            tracing::debug!(error = %e, "closing the admin connection");
        }
        Ok(Self {
            url: pg.url(&name),
            name,
            admin_url,
        })
    }

    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = self.admin_url.clone();
        // Drop may run inside a tokio runtime, where blocking on another
        // runtime panics: use a thread of our own with its own runtime.
        let joined = std::thread::spawn(move || -> Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = PgConnection::connect(&admin_url).await?;
                sqlx::query(AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok(())
            })
        })
        .join();
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(db = %self.name, error = format!("{e:#}"), "dropping test database")
            }
            Err(_) => tracing::warn!(db = %self.name, "panic while dropping test database"),
        }
    }
}
