//! `just dev`: the whole pipeline on this machine, fed by simulated devices.
//!
//! Starts nats-server, PostgreSQL and mosquitto (data kept under `.dev/`, so
//! a restart keeps what was stored), runs the four services in this process,
//! starts a simulated fleet over HTTP and a second one over MQTT, and prints
//! where to look. Ctrl-C stops everything cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use tributary_runtime::LogArgs;
use tributary_stack::{Options, Servers, Services};

/// Run the whole Tributary pipeline locally with simulated devices.
#[derive(Debug, Parser)]
#[command(name = "tributary-dev")]
struct Args {
    /// Where the servers keep their data between runs.
    #[arg(long, env = "TRIBUTARY_DEV_DIR", default_value = ".dev")]
    data_dir: PathBuf,
    /// Where the server configurations (nats-server.conf, mosquitto.conf) are.
    #[arg(long, env = "TRIBUTARY_DEV_DEPLOY_DIR", default_value = "deploy")]
    deploy_dir: PathBuf,
    /// Producer (ingest API) address.
    #[arg(long, env = "TRIBUTARY_DEV_PRODUCER", default_value = "127.0.0.1:8080")]
    producer: SocketAddr,
    /// Query API address.
    #[arg(long, env = "TRIBUTARY_DEV_QUERY", default_value = "127.0.0.1:8082")]
    query: SocketAddr,
    /// Simulated devices per fleet (one fleet over HTTP, one over MQTT).
    #[arg(long, env = "TRIBUTARY_DEV_DEVICES", default_value_t = 10)]
    devices: u32,
    /// Payloads per second per fleet.
    #[arg(long, env = "TRIBUTARY_DEV_RATE", default_value_t = 5.0)]
    rate: f64,
    #[command(flatten)]
    log: LogArgs,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.log.log_filter == "info" {
        // The services' own lines, not every client library's connection chatter.
        args.log.log_filter = "info,async_nats=warn,sqlx=warn".to_owned();
    }
    tributary_runtime::telemetry::init(&args.log);
    let shutdown = tributary_runtime::shutdown_on_signals();

    let servers = Servers::start_in(&args.data_dir, &args.deploy_dir)
        .await
        .context("starting the servers")?;
    let options = Options {
        producer_listen: args.producer,
        query_listen: args.query,
        mqtt_topics: vec!["devices/#".to_owned()],
        sink_linger: Duration::from_millis(200),
        ..Options::default()
    };
    let services = Services::start(&servers, &options).await?;

    // Two fleets with different seeds, so their device ids differ.
    let mut http_fleet = simulator::Config::http(&services.producer.url());
    http_fleet.devices = args.devices;
    http_fleet.rate = args.rate;
    http_fleet.seed = 1;
    let mut mqtt_fleet = simulator::Config::mqtt(servers.mosquitto.host(), servers.mosquitto.port());
    mqtt_fleet.devices = args.devices;
    mqtt_fleet.rate = args.rate;
    mqtt_fleet.seed = 2;
    let example_device = simulator::Fleet::new(args.devices, 10, 1, 0, 1_000_000)
        .next_payload()
        .0;
    let fleets = [
        tokio::spawn(simulator::run(http_fleet, shutdown.clone())),
        tokio::spawn(simulator::run(mqtt_fleet, shutdown.clone())),
    ];

    print_banner(&servers, &services, &example_device);
    shutdown.cancelled().await;
    for fleet in fleets {
        match fleet.await {
            Ok(Ok(report)) => tracing::info!(?report, "simulated fleet stopped"),
            Ok(Err(error)) => tracing::warn!(%error, "simulated fleet failed"),
            Err(error) => tracing::warn!(%error, "simulated fleet panicked"),
        }
    }
    services.stop().await?;
    drop(servers);
    tracing::info!("everything stopped; data kept in {}", args.data_dir.display());
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the banner is the dev runner's user interface")]
fn print_banner(servers: &Servers, services: &Services, device: &str) {
    let query = services.query_api.url();
    println!(
        "\n\
         Tributary is running, fed by two simulated fleets (HTTP and MQTT).\n\
         \n\
         \x20 dashboard       {query}/\n\
         \x20 ingest (HTTP)   POST {producer}/v1/ingest/<source>\n\
         \x20 ingest (MQTT)   mqtt://{mqtt_host}:{mqtt_port}  topics devices/#\n\
         \x20 query API       {query}/v1/series?device=<id>&metric=<name>  (all of it: {query}/openapi.json)\n\
         \x20 try             curl '{query}/v1/series?device={device}&metric=APFluid&limit=5'\n\
         \x20 NATS            {nats}\n\
         \x20 PostgreSQL      {db}\n\
         \x20 admin           /healthz /readyz /metrics on producer {producer}, query API {query},\n\
         \x20                 transformer {transformer}, sink {sink}\n\
         \n\
         Ctrl-C stops everything.\n",
        producer = services.producer.url(),
        mqtt_host = servers.mosquitto.host(),
        mqtt_port = servers.mosquitto.port(),
        nats = servers.nats.url(),
        db = servers.database_url,
        transformer = services.transformer.url(),
        sink = services.sink.url(),
    );
}
