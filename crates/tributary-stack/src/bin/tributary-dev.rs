//! `just dev`: the whole pipeline on this machine, fed by simulated devices.
//!
//! Starts nats-server, PostgreSQL and mosquitto (data kept under `.dev/`, so
//! a restart keeps what was stored), runs the four services and the alerter
//! (with `deploy/dev-alert-rules.toml`) in this process, starts a simulated
//! fleet over HTTP and a second one over MQTT, whose scheduled incidents
//! (a pressure surge, a silent device) make alerts fire and resolve within
//! the first minute, prints where to look (the dashboard first) and then one
//! status line, redrawn in place. The services' logs go to files under
//! `.dev/logs/`. Ctrl-C stops everything cleanly.

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
    /// The alerter's rules file (read again when it changes). Default:
    /// dev-alert-rules.toml in --deploy-dir, which watches for the simulated
    /// fleets' incidents.
    #[arg(long, env = "TRIBUTARY_DEV_ALERT_RULES")]
    alert_rules: Option<PathBuf>,
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

/// The seeds of the HTTP fleet and the MQTT fleet.
const FLEET_SEEDS: [u64; 2] = [1, 2];

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.log.log_filter == "info" {
        // The services' own lines, not every client library's connection chatter.
        args.log.log_filter = "info,async_nats=warn,sqlx=warn".to_owned();
    }
    let logs = args.data_dir.join("logs");
    init_log_files(&logs, &args.log.log_filter)?;
    let shutdown = tributary_runtime::shutdown_on_signals();

    let servers = Servers::start_in(&args.data_dir, &args.deploy_dir)
        .await
        .context("starting the servers")?;
    let rules = args
        .alert_rules
        .clone()
        .unwrap_or_else(|| args.deploy_dir.join("dev-alert-rules.toml"));
    let options = Options {
        producer_listen: args.producer,
        query_listen: args.query,
        mqtt_topics: vec!["devices/#".to_owned()],
        sink_linger: Duration::from_millis(200),
        alert_rules: Some(rules.clone()),
        ..Options::default()
    };
    let services = Services::start(&servers, &options).await?;

    // Two fleets with different seeds, so their device ids differ; each has
    // its scheduled incidents (the simulator's default) for the alerter.
    let mut http_fleet = simulator::Config::http(&services.producer.url());
    http_fleet.devices = args.devices;
    http_fleet.rate = args.rate;
    http_fleet.seed = FLEET_SEEDS[0];
    let mut mqtt_fleet = simulator::Config::mqtt(servers.mosquitto.host(), servers.mosquitto.port());
    mqtt_fleet.devices = args.devices;
    mqtt_fleet.rate = args.rate;
    mqtt_fleet.seed = FLEET_SEEDS[1];
    let example_device = simulator::Fleet::new(args.devices, 10, FLEET_SEEDS[0], 0, 1_000_000)
        .next_payload()
        .0;
    let fleets = [
        tokio::spawn(simulator::run(http_fleet, shutdown.clone())),
        tokio::spawn(simulator::run(mqtt_fleet, shutdown.clone())),
    ];

    print_banner(&servers, &services, &example_device, &logs, &rules);
    let js = async_nats::jetstream::new(async_nats::connect(servers.nats.url()).await?);
    status_line(js, shutdown.clone()).await;
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
fn print_banner(servers: &Servers, services: &Services, device: &str, logs: &std::path::Path, rules: &std::path::Path) {
    let query = services.query_api.url();
    let alerter = services.alerter.as_ref().map_or_else(String::new, |a| a.url());
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
         \x20 alerts          rules {rules} (edit it: it is read again), each transition an AlertEvent\n\
         \x20                 on alerts.<rule>.<device> in TELEMETRY_ALERTS; every minute each fleet has a\n\
         \x20                 pressure surge and a silent device, so alerts fire and resolve (status line below)\n\
         \x20 admin           /healthz /readyz /metrics on producer {producer}, query API {query},\n\
         \x20                 transformer {transformer}, sink {sink}, alerter {alerter}\n\
         \n\
         \x20 logs            {logs}/<service>.log\n\
         \n\
         Ctrl-C stops everything.\n",
        logs = logs.display(),
        rules = rules.display(),
        producer = services.producer.url(),
        mqtt_host = servers.mosquitto.host(),
        mqtt_port = servers.mosquitto.port(),
        nats = servers.nats.url(),
        db = servers.database_url,
        transformer = services.transformer.url(),
        sink = services.sink.url(),
    );
}

/// Each service's log lines to its own file under `dir` (by the target of
/// the event: the crate that logged it), everything else to `dev.log`;
/// nothing to the terminal, which shows the banner and the status line.
fn init_log_files(dir: &std::path::Path, filter: &str) -> Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    const FILES: [(&str, &[&str]); 6] = [
        ("producer", &["producer"]),
        ("transformer", &["transformer"]),
        ("sink", &["sink", "tributary_store"]),
        ("query-api", &["query_api"]),
        ("alerter", &["alerter", "tributary_alerts"]),
        ("simulator", &["simulator"]),
    ];
    let open = |name: &str| -> Result<std::sync::Mutex<std::fs::File>> {
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(std::sync::Mutex::new(file))
    };
    let owned = |target: &str| {
        FILES
            .iter()
            .any(|(_, prefixes)| prefixes.iter().any(|p| target.starts_with(p)))
    };
    let mut layers = Vec::new();
    for (name, prefixes) in FILES {
        layers.push(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(open(name)?)
                .with_filter(tracing_subscriber::filter::filter_fn(move |meta| {
                    prefixes.iter().any(|p| meta.target().starts_with(p))
                }))
                .boxed(),
        );
    }
    layers.push(
        tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(open("dev")?)
            .with_filter(tracing_subscriber::filter::filter_fn(move |meta| !owned(meta.target())))
            .boxed(),
    );
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry().with(filter).with(layers).try_init().ok();
    Ok(())
}

/// One counter of this process's Prometheus metrics (the services run in it), summed over its labels.
fn counter(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The alerter's transitions into `state` so far, whatever its other labels.
fn transitions(text: &str, state: &str) -> u64 {
    let label = format!("state=\"{state}\"");
    text.lines()
        .filter(|l| l.starts_with("tributary_alerter_transitions_total{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|n| n as u64)
        .sum()
}

/// Until `shutdown`: one line, redrawn every second in place on a terminal
/// (elsewhere printed every 10 s): payloads in per second, rows stored per
/// second, the consumers' backlog, the dead letters and the alerts fired
/// and resolved since the start.
async fn status_line(js: async_nats::jetstream::Context, shutdown: tributary_runtime::CancellationToken) {
    use std::io::{IsTerminal as _, Write as _};
    let tty = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last: Option<(tokio::time::Instant, u64, f64)> = None;
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        ticks += 1;
        let mut received = 0;
        let mut lag = 0;
        for (stream, durable) in [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")] {
            let Ok(mut stream) = js.get_stream(stream).await else {
                continue;
            };
            if durable == "transformer" {
                received = stream.info().await.map(|i| i.state.last_sequence).unwrap_or(0);
            }
            if let Ok(mut consumer) = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
                .await
                && let Ok(info) = consumer.info().await
            {
                lag += info.num_pending + info.num_ack_pending as u64;
            }
        }
        let dead = match js.get_stream("TELEMETRY_DLQ").await {
            Ok(mut dlq) => dlq.info().await.map(|i| i.state.messages).unwrap_or(0),
            Err(_) => 0,
        };
        let metrics = tributary_runtime::telemetry::prometheus().render();
        let stored = counter(&metrics, "tributary_sink_rows_total{outcome=\"inserted\"}")
            + counter(&metrics, "tributary_sink_rows_total{outcome=\"corrected\"}");
        let now = tokio::time::Instant::now();
        let (in_rate, stored_rate) = match last {
            Some((at, r, s)) => {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                (received.saturating_sub(r) as f64 / secs, (stored - s).max(0.0) / secs)
            }
            None => (0.0, 0.0),
        };
        last = Some((now, received, stored));
        let (fired, resolved) = (transitions(&metrics, "firing"), transitions(&metrics, "resolved"));
        let line = format!(
            "in {in_rate:.0} payloads/s · stored {stored_rate:.0} rows/s · consumer lag {lag} · dead letters {dead} · \
             alerts fired {fired}, resolved {resolved}"
        );
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\r\x1b[2K{line}");
            let _ = out.flush();
        } else if ticks.is_multiple_of(10) {
            let _ = writeln!(out, "{line}");
        }
    }
    if tty {
        let _ = writeln!(std::io::stdout());
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory as _;
    use tributary_alerts::{Engine, Point, RuleSet, State, ValueRef};

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    /// The dev rules, fed what each of `just dev`'s fleets sends (at its
    /// default size and rate, event time following the clock, ticks every
    /// second, the alerter's default lateness), fire an alert of every rule
    /// within the first minute and resolve it within 90 s.
    #[test]
    fn the_dev_rules_fire_and_resolve_on_the_fleets_incidents_within_a_minute() {
        const SECOND: i64 = 1_000_000;
        let args = Args::parse_from(["tributary-dev"]);
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/dev-alert-rules.toml");
        let text = std::fs::read_to_string(&path).expect("deploy/dev-alert-rules.toml");
        let rules = RuleSet::from_toml(&text).expect("the dev rules are valid");
        assert!(!rules.rules().is_empty());
        let lateness = alerter::Config::for_nats("nats://127.0.0.1:1", &path).lateness;
        for seed in FLEET_SEEDS {
            let mut config = simulator::Config::http("http://127.0.0.1:1");
            config.devices = args.devices;
            config.rate = args.rate;
            config.seed = seed;
            config.start_time = Some("2024-05-01T00:00:00Z".to_owned());
            assert!(config.incidents, "the dev fleets run the simulator's incidents");
            let start = config.start_time_us().expect("a start time");
            let mut fleet = config.fleet().expect("a fleet");
            let devices: Vec<String> = fleet.device_ids().map(str::to_owned).collect();
            for rule in rules.rules() {
                let watches = devices.iter().any(|device| {
                    (0..config.metrics as usize).any(|m| rule.matches(device, &simulator::fleet::metric_name(m)))
                });
                assert!(watches, "rule {} watches nothing the fleet sends", rule.name);
            }

            let mut engine = Engine::new(&rules, lateness);
            let mut transitions = Vec::new();
            let mut next_tick = start + SECOND;
            let turns = (90.0 * config.rate) as u64;
            for turn in 0..turns {
                // The simulator paces turns (silent ones included) at --rate.
                let now = start + (turn as f64 * 1e6 / config.rate) as i64;
                while next_tick <= now {
                    engine.tick(next_tick, &mut transitions);
                    next_tick += SECOND;
                }
                let Some(payload) = fleet.next_turn() else {
                    continue;
                };
                let json: serde_json::Value = serde_json::from_slice(&payload.body).expect("items JSON");
                for (metric, value) in json["items"].as_object().expect("items") {
                    let number = value
                        .as_f64()
                        .or_else(|| value.as_str()?.parse().ok())
                        .expect("a numeric reading");
                    let point = Point {
                        device: &payload.device_id,
                        metric,
                        // Milliseconds on the wire.
                        time_us: payload.event_time_us / 1000 * 1000,
                        received_us: now,
                        value: ValueRef::Number(number),
                    };
                    engine.observe(&point, now, &mut transitions);
                }
            }
            let first = |rule: &str, state: State| {
                transitions
                    .iter()
                    .filter(|t| &*t.rule == rule && t.state == state)
                    .map(|t| t.transition_time_us - start)
                    .min()
            };
            for rule in rules.rules() {
                let fired = first(&rule.name, State::Firing);
                assert!(
                    fired.is_some_and(|t| t <= 60 * SECOND),
                    "fleet {seed}: rule {} first fired at {fired:?} µs",
                    rule.name
                );
                let resolved = first(&rule.name, State::Resolved);
                assert!(
                    resolved.is_some_and(|t| t <= 90 * SECOND),
                    "fleet {seed}: rule {} first resolved at {resolved:?} µs",
                    rule.name
                );
            }
        }
    }
}
