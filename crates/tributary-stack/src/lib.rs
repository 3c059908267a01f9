//! The whole pipeline in one process, on real servers: `nats-server`,
//! PostgreSQL and `mosquitto` from the test kit, and the four services
//! started in-process through their `start(config, shutdown)` functions,
//! plus the alerter when [`Options::alert_rules`] names a rules file.
//! `just dev` (the `tributary-dev` binary) and the end-to-end tests use it.
//!
//! Never used by a service, and never a place for pipeline logic: it only
//! wires the real parts together the way a deployment would.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tributary_runtime::CancellationToken;
use tributary_testkit::{Mosquitto, NatsServer, Postgres, TestDb};

/// The three servers the pipeline needs.
pub struct Servers {
    pub nats: NatsServer,
    pub mosquitto: Mosquitto,
    /// URL of the database the sink and query API use.
    pub database_url: String,
    /// Keeps the database alive (dropped after the services).
    _database: Database,
}

enum Database {
    /// A fresh database on the test process's shared server.
    Test(#[expect(dead_code, reason = "held for its Drop")] TestDb),
    /// A server of our own: with its data in a kept directory (`just dev`),
    /// or temporary for a test that stops or pauses it.
    Own(Postgres),
}

impl Servers {
    /// Fresh servers with temporary data: for tests.
    pub async fn start_temporary() -> Result<Self> {
        let nats = NatsServer::start()?;
        let mosquitto = Mosquitto::start()?;
        let db = TestDb::create().await?;
        Ok(Self {
            nats,
            mosquitto,
            database_url: db.url().to_owned(),
            _database: Database::Test(db),
        })
    }

    /// Fresh servers with temporary data and a PostgreSQL server of their own
    /// (not the test process's shared one), for tests that stop or pause it.
    pub async fn start_with_own_database() -> Result<Self> {
        let nats = NatsServer::start()?;
        let mosquitto = Mosquitto::start()?;
        let postgres = tokio::task::spawn_blocking(Postgres::start).await??;
        Ok(Self {
            nats,
            mosquitto,
            database_url: postgres.url("postgres"),
            _database: Database::Own(postgres),
        })
    }

    /// The PostgreSQL server, when these servers run one of their own.
    pub fn postgres(&mut self) -> Option<&mut Postgres> {
        match &mut self._database {
            Database::Own(postgres) => Some(postgres),
            Database::Test(_) => None,
        }
    }

    /// Servers whose data lives under `dir` and survives restarts, reading
    /// the server configurations in `deploy_dir`: for `just dev`.
    pub async fn start_in(dir: &Path, deploy_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let nats = NatsServer::start_in_with_config(&dir.join("nats"), None, &deploy_dir.join("nats-server.conf"))?;
        let mosquitto =
            Mosquitto::start_in_with_config(&dir.join("mosquitto"), None, &deploy_dir.join("mosquitto.conf"))?;
        let postgres = Postgres::start_in(&dir.join("postgres"), None)?;
        let admin_url = postgres.url("postgres");
        let exists: bool = {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&admin_url)
                .await
                .context("connecting to PostgreSQL")?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'tributary')")
                    .fetch_one(&mut conn)
                    .await?;
            if !exists {
                sqlx::query("CREATE DATABASE tributary").execute(&mut conn).await?;
            }
            exists
        };
        tracing::debug!(existing_database = exists, "database ready");
        Ok(Self {
            nats,
            mosquitto,
            database_url: postgres.url("tributary"),
            _database: Database::Own(postgres),
        })
    }
}

/// How to run the services.
#[derive(Debug, Clone)]
pub struct Options {
    pub producer_listen: SocketAddr,
    pub query_listen: SocketAddr,
    /// MQTT topic filters the producer bridges.
    pub mqtt_topics: Vec<String>,
    /// The sink's batch linger (short in tests, so results show quickly).
    pub sink_linger: Duration,
    /// How long the transformer and sink may hold a message unacked before
    /// JetStream redelivers it (short in kill tests).
    pub ack_wait: Duration,
    /// The transformer's chunk bound for one device's `MetricBatch`.
    pub max_batch_bytes: usize,
    /// Test failpoint: the transformer leaves its first N transformed raw
    /// messages unacknowledged, so JetStream redelivers them after `ack_wait`.
    pub transformer_leave_unacked: u64,
    /// The streams' limits, the same for every service (each provisions them).
    pub streams: tributary_runtime::StreamArgs,
    /// The route table file (`--routes`) of the producer and the
    /// transformer; none: items JSON for everything.
    pub routes: Option<std::path::PathBuf>,
    /// The sink's `--retention` for rows (`None`: for ever).
    pub sink_retention: Option<Duration>,
    /// The alerter's rules file: with one, [`Services::start`] starts the
    /// alerter too; `None` (the default): no alerter.
    pub alert_rules: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("literal address");
        Self {
            producer_listen: any_port,
            query_listen: any_port,
            mqtt_topics: vec!["devices/#".to_owned()],
            sink_linger: Duration::from_millis(50),
            ack_wait: Duration::from_secs(30),
            max_batch_bytes: 256 * 1024,
            transformer_leave_unacked: 0,
            streams: tributary_runtime::StreamArgs::default(),
            routes: None,
            sink_retention: None,
            alert_rules: None,
        }
    }
}

/// One running service.
pub struct Part {
    pub name: &'static str,
    /// Its HTTP listener (API and/or admin routes).
    pub addr: SocketAddr,
    /// `None` once stopped.
    handle: Option<tributary_runtime::ServiceHandle>,
}

impl Part {
    pub fn new(name: &'static str, handle: tributary_runtime::ServiceHandle) -> Self {
        Self {
            name,
            addr: handle.addr,
            handle: Some(handle),
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Graceful stop (as on SIGTERM): the service finishes and acks what it holds.
    pub async fn stop(mut self) -> Result<()> {
        self.halt().await
    }

    /// [`Part::stop`] in place, for a test that starts a new one later. A
    /// no-op once stopped.
    pub async fn halt(&mut self) -> Result<()> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        handle.stop();
        let name = self.name;
        tokio::time::timeout(Duration::from_secs(30), handle.wait())
            .await
            .with_context(|| format!("{name} did not stop within 30 s"))?
            .with_context(|| format!("{name} failed"))
    }

    /// Waits for the service to end by itself (a task failed), up to `timeout`.
    pub async fn ended(mut self, timeout: Duration) -> Result<Result<(), tributary_runtime::ServiceError>> {
        let handle = self.handle.take().context("already stopped")?;
        let name = self.name;
        tokio::time::timeout(timeout, handle.wait())
            .await
            .with_context(|| format!("{name} still running after {timeout:?}"))
    }

    /// Sudden death (as on SIGKILL, within this process): every task is
    /// dropped mid-work; nothing is finished or acknowledged.
    pub fn kill(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }

    /// Polls `/readyz` until it answers 200; on a timeout the error says
    /// which checks were still failing.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = format!("{}/readyz", self.url());
        let client = reqwest::Client::new();
        let waited = tributary_testkit::wait_until(timeout, &format!("{} ready", self.name), || async {
            matches!(client.get(&url).send().await, Ok(r) if r.status().is_success())
        })
        .await;
        if waited.is_err() {
            let last = match client.get(&url).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(error) => error.to_string(),
            };
            return waited.with_context(|| format!("last /readyz: {last}"));
        }
        Ok(())
    }
}

/// Starts the producer (HTTP ingest and the MQTT bridge).
pub async fn start_producer(servers: &Servers, options: &Options) -> Result<Part> {
    let mut config = producer::Config::for_nats(&servers.nats.url());
    config.listen = options.producer_listen;
    config.streams = options.streams.clone();
    config.routes.clone_from(&options.routes);
    if !options.mqtt_topics.is_empty() {
        config.mqtt_broker = Some(format!("{}:{}", servers.mosquitto.host(), servers.mosquitto.port()));
        config.mqtt_topics = options.mqtt_topics.clone();
    }
    let handle = producer::start(config, CancellationToken::new())
        .await
        .context("starting the producer")?;
    Ok(Part::new("producer", handle))
}

/// Starts the transformer.
pub async fn start_transformer(servers: &Servers, options: &Options) -> Result<Part> {
    let mut config = transformer::Config::for_nats(&servers.nats.url());
    config.ack_wait = options.ack_wait;
    config.max_batch_bytes = options.max_batch_bytes;
    config.test_leave_unacked = options.transformer_leave_unacked;
    config.routes.clone_from(&options.routes);
    config.streams = options.streams.clone();
    let handle = transformer::start(config, CancellationToken::new())
        .await
        .context("starting the transformer")?;
    Ok(Part::new("transformer", handle))
}

/// Starts the sink.
pub async fn start_sink(servers: &Servers, options: &Options) -> Result<Part> {
    start_sink_at(servers, options, &servers.database_url).await
}

/// Starts the sink on another database URL (one through a fault proxy, say).
pub async fn start_sink_at(servers: &Servers, options: &Options, database_url: &str) -> Result<Part> {
    let mut config = sink::Config::for_servers(&servers.nats.url(), database_url);
    config.batch_linger = options.sink_linger;
    config.ack_wait = options.ack_wait;
    // A write must give up before its messages would be redelivered.
    config.write_timeout = config.write_timeout.min(options.ack_wait / 2);
    config.streams = options.streams.clone();
    config.retention = sink::config::Keep(options.sink_retention);
    let handle = sink::start(config, CancellationToken::new())
        .await
        .context("starting the sink")?;
    Ok(Part::new("sink", handle))
}

/// Starts the query API.
pub async fn start_query_api(servers: &Servers, options: &Options) -> Result<Part> {
    let mut config = query_api::Config::for_database(&servers.database_url);
    config.listen = options.query_listen;
    config.nats = tributary_runtime::NatsArgs::with_url(servers.nats.url());
    config.streams = options.streams.clone();
    let handle = query_api::start(config, CancellationToken::new())
        .await
        .context("starting the query API")?;
    Ok(Part::new("query-api", handle))
}

/// Starts the alerter (one replica, the default) with the rules in `rules`,
/// its stream and consumer limits from `options`.
pub async fn start_alerter(servers: &Servers, options: &Options, rules: &Path) -> Result<Part> {
    let mut config = alerter::Config::for_nats(&servers.nats.url(), rules);
    config.streams = options.streams.clone();
    config.ack_wait = options.ack_wait;
    let handle = alerter::start(config, CancellationToken::new())
        .await
        .context("starting the alerter")?;
    Ok(Part::new("alerter", handle))
}

/// The four services, and the alerter when asked for.
pub struct Services {
    pub producer: Part,
    pub transformer: Part,
    pub sink: Part,
    pub query_api: Part,
    /// Running when [`Options::alert_rules`] named a rules file.
    pub alerter: Option<Part>,
}

impl Services {
    /// Starts all four (and the alerter, with [`Options::alert_rules`]) and
    /// waits until each reports ready.
    pub async fn start(servers: &Servers, options: &Options) -> Result<Self> {
        let services = Self {
            producer: start_producer(servers, options).await?,
            transformer: start_transformer(servers, options).await?,
            sink: start_sink(servers, options).await?,
            query_api: start_query_api(servers, options).await?,
            alerter: match &options.alert_rules {
                Some(rules) => Some(start_alerter(servers, options, rules).await?),
                None => None,
            },
        };
        for part in [
            &services.producer,
            &services.transformer,
            &services.sink,
            &services.query_api,
        ]
        .into_iter()
        .chain(&services.alerter)
        {
            part.wait_ready(Duration::from_secs(30)).await?;
        }
        Ok(services)
    }

    /// Stops them all gracefully, the front door first.
    pub async fn stop(self) -> Result<()> {
        self.producer.stop().await?;
        self.transformer.stop().await?;
        self.sink.stop().await?;
        if let Some(alerter) = self.alerter {
            alerter.stop().await?;
        }
        self.query_api.stop().await
    }
}
