//! The pipeline under test: nats-server (one, or a cluster of three with
//! every stream replicated three times), PostgreSQL and mosquitto of its
//! own, the producer, transformer and sink as real processes, and a fault
//! proxy on every link between a service and a server (in a cluster, one per
//! node on each link to NATS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use tributary_testkit::{FaultProxy, Mosquitto, NatsServer, Postgres, ServiceProcess};

/// The services, in the order [`Cluster::services`] holds them.
pub const SERVICES: [&str; 3] = ["producer", "transformer", "sink"];
pub const PRODUCER: usize = 0;
pub const TRANSFORMER: usize = 1;
pub const SINK: usize = 2;

/// The durable consumers the services read with, on which stream.
pub const CONSUMERS: [(&str, &str); 2] = [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")];

/// The MQTT topics the ledger publishes to and the bridge reads.
pub const TOPIC_PREFIX: &str = "chaos";

/// A connection between a service and a server, through a fault proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    ProducerNats,
    ProducerMqtt,
    TransformerNats,
    SinkNats,
    SinkPostgres,
}

impl Link {
    pub const ALL: [Link; 5] = [
        Link::ProducerNats,
        Link::ProducerMqtt,
        Link::TransformerNats,
        Link::SinkNats,
        Link::SinkPostgres,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Link::ProducerNats => "producer→nats",
            Link::ProducerMqtt => "producer→mosquitto",
            Link::TransformerNats => "transformer→nats",
            Link::SinkNats => "sink→nats",
            Link::SinkPostgres => "sink→postgres",
        }
    }
}

/// Nodes of the NATS cluster `--nats-cluster` starts (and the replicas of
/// every stream): three, the fewest that keep a quorum with one node down.
pub const CLUSTER_NODES: usize = 3;

/// Everything running. Fields drop in order: the services first, the
/// directory holding the servers' data last.
pub struct Cluster {
    pub services: Vec<ServiceProcess>,
    /// Each link's proxy; on a link to NATS, one per node (the node's index).
    pub proxies: Vec<(Link, usize, FaultProxy)>,
    /// One server, or the nodes of a cluster (`node-1`…).
    pub nats: Vec<NatsServer>,
    pub postgres: Postgres,
    pub mosquitto: Mosquitto,
    /// The ledger's own connections, straight to the servers.
    pub js: async_nats::jetstream::Context,
    pub db: sqlx::PgPool,
    /// `TRIBUTARY_FAILPOINTS` every service runs with (`--failpoint`).
    pub failpoints: Option<String>,
    pub logs: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the servers, the proxies and the three services, and waits
    /// until every service is ready. `bin_dir`: where the service binaries
    /// are (`None`: next to this program, checked to be fresh). `clustered`:
    /// three NATS nodes and streams with three replicas, each service given
    /// every node (through its proxies).
    pub async fn start(bin_dir: Option<&Path>, failpoints: Option<&str>, clustered: bool) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tributary-chaos-").tempdir()?;
        let nats = match clustered {
            true => NatsServer::start_cluster(CLUSTER_NODES)?,
            false => vec![NatsServer::start()?],
        };
        // PostgreSQL's default durability: it is stopped the hard way, and
        // an acknowledged commit must survive that (synchronous_commit on).
        let postgres = Postgres::start_in(&dir.path().join("postgres"), None)?;
        let mosquitto = Mosquitto::start()?;
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&postgres.url("postgres")).await?;
            sqlx::query("CREATE DATABASE tributary").execute(&mut conn).await?;
        }
        let loopback = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut proxies = Vec::new();
        for link in Link::ALL {
            let upstreams: Vec<u16> = match link {
                Link::ProducerNats | Link::TransformerNats | Link::SinkNats => {
                    nats.iter().map(NatsServer::port).collect()
                }
                Link::ProducerMqtt => vec![mosquitto.port()],
                Link::SinkPostgres => vec![postgres.port()],
            };
            for (node, upstream) in upstreams.into_iter().enumerate() {
                proxies.push((link, node, FaultProxy::start(loopback(upstream)).await?));
            }
        }
        let via = |link: Link| {
            proxies
                .iter()
                .find(|(l, _, _)| *l == link)
                .expect("every link has a proxy")
                .2
                .port()
        };
        // Every node, each through this link's proxy for it.
        let nats_via = |link: Link| {
            proxies
                .iter()
                .filter(|(l, _, _)| *l == link)
                .map(|(_, _, proxy)| format!("nats://127.0.0.1:{}", proxy.port()))
                .collect::<Vec<_>>()
                .join(",")
        };
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let grace = ("TRIBUTARY_SHUTDOWN_GRACE", "15s".to_owned());
        let mut envs: [Vec<(&str, String)>; 3] = [
            vec![
                ("TRIBUTARY_NATS_URL", nats_via(Link::ProducerNats)),
                // A publish that hangs is answered 503 soon: the client retries.
                ("TRIBUTARY_NATS_REQUEST_TIMEOUT", "3s".to_owned()),
                (
                    "TRIBUTARY_MQTT_BROKER",
                    format!("127.0.0.1:{}", via(Link::ProducerMqtt)),
                ),
                ("TRIBUTARY_MQTT_TOPICS", format!("{TOPIC_PREFIX}/#")),
                ("TRIBUTARY_MQTT_CLIENT_ID", "chaos-bridge".to_owned()),
                grace.clone(),
            ],
            vec![
                ("TRIBUTARY_NATS_URL", nats_via(Link::TransformerNats)),
                // What a killed transformer held comes back within seconds.
                ("TRIBUTARY_ACK_WAIT", "5s".to_owned()),
                grace.clone(),
            ],
            vec![
                ("TRIBUTARY_NATS_URL", nats_via(Link::SinkNats)),
                (
                    "TRIBUTARY_DATABASE_URL",
                    format!("postgres://postgres@127.0.0.1:{}/tributary", via(Link::SinkPostgres)),
                ),
                ("TRIBUTARY_ACK_WAIT", "10s".to_owned()),
                ("TRIBUTARY_WRITE_TIMEOUT", "4s".to_owned()),
                grace,
            ],
        ];
        if let Some(spec) = failpoints {
            for env in &mut envs {
                env.push((tributary_runtime::failpoint::VARIABLE, spec.to_owned()));
            }
        }
        if clustered {
            for env in &mut envs {
                env.push(("TRIBUTARY_STREAM_REPLICAS", CLUSTER_NODES.to_string()));
            }
        }
        let mut services = Vec::new();
        for (name, env) in SERVICES.iter().zip(&envs) {
            services.push(match bin_dir {
                Some(bin_dir) => ServiceProcess::spawn_from(bin_dir, name, &logs, env)?,
                None => ServiceProcess::spawn(name, &logs, env)?,
            });
        }
        for service in &mut services {
            service.wait_ready(Duration::from_secs(60)).await?;
        }
        // Straight to every node. Short pings: a connection to a frozen node
        // is given up within seconds, not minutes.
        let js = async_nats::jetstream::new(
            async_nats::ConnectOptions::new()
                .retry_on_initial_connect()
                .ping_interval(Duration::from_secs(2))
                .connection_timeout(Duration::from_secs(3))
                .connect(nats.iter().map(NatsServer::url).collect::<Vec<_>>())
                .await?,
        );
        let db = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&postgres.url("tributary"))
            .await
            .context("connecting to the ledger's database")?;
        Ok(Self {
            services,
            proxies,
            nats,
            postgres,
            mosquitto,
            js,
            db,
            failpoints: failpoints.map(str::to_owned),
            logs,
            dir,
        })
    }

    /// `http://…/v1/ingest/chaos` on the producer (its port survives restarts).
    pub fn ingest_url(&self) -> String {
        format!("{}/v1/ingest/chaos", self.services[PRODUCER].url())
    }

    /// Whether NATS runs as a cluster (`--nats-cluster`).
    pub fn clustered(&self) -> bool {
        self.nats.len() > 1
    }

    /// The proxies of `link`: one, or on a link to a NATS cluster one per node.
    pub fn proxies(&self, link: Link) -> impl Iterator<Item = &FaultProxy> {
        self.proxies
            .iter()
            .filter(move |(l, _, _)| *l == link)
            .map(|(_, _, proxy)| proxy)
    }

    /// The index of the NATS node named `name` (a stream's `cluster.leader`).
    pub fn node(&self, name: &str) -> Option<usize> {
        self.nats.iter().position(|node| node.name() == name)
    }

    /// Whether every service answers `/readyz` with 200.
    pub async fn all_ready(&self) -> bool {
        for service in &self.services {
            if service.get_status("/readyz").await != Some(200) {
                return false;
            }
        }
        true
    }
}
