//! One benchmark run: servers, the four services as release processes, the
//! machine's limits, then load phases driven by the simulator, and a last
//! phase with the alerter running too.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sqlx::PgPool;
use tributary_runtime::{CancellationToken, parse_duration};
use tributary_testkit::{Mosquitto, NatsServer, Postgres};

use crate::alerter::{AlerterFigures, Counters};
use crate::limits::{self, Limits, Targets};
use crate::measure::{self, FramingCheck, Freshness, LossCheck};
use crate::nats_sync::NatsSync;
use tributary_testkit::ServiceProcess;

use crate::procs::{self, Usage};
use crate::samples::Samples;

/// A fixed-rate phase at least this long is the headline figure; shorter ones and find-max steps are indicative.
pub const HEADLINE_PHASE: Duration = Duration::from_secs(120);

/// Drive the whole pipeline with simulated devices and measure it against
/// this machine's own limits.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "tributary-bench")]
pub struct Args {
    /// Short run (about a minute): 20 s per transport, smaller limit measurements.
    #[arg(long)]
    pub quick: bool,
    /// Which ingest path to load.
    #[arg(long, value_enum, default_value = "both")]
    pub transport: TransportChoice,
    /// Offered load, payloads per second in total.
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Instead of one fixed rate, raise the rate step by step (x1.5 from --rate)
    /// until the pipeline no longer keeps up, and report the highest sustained one.
    #[arg(long)]
    pub find_max: bool,
    /// Length of each load phase (default 2m, or 20s with --quick; each --find-max step: a third of it).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Metrics per payload.
    #[arg(long, default_value_t = 10)]
    pub metrics: u32,
    /// Simulated devices.
    #[arg(long, default_value_t = 200)]
    pub devices: u32,
    /// Payload format the simulator writes: items JSON, SenML JSON, line protocol (over HTTP to the InfluxDB
    /// write endpoint) or Sparkplug B (MQTT only). The services get a route table that decodes it.
    #[arg(long, value_enum, default_value = "items")]
    pub format: simulator::PayloadFormat,
    /// Producer processes. Above 1 they bridge MQTT as one shared-subscription group (`$share/bench/…`), each with
    /// its own client id; HTTP load still goes to the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub producers: u8,
    /// Whether the sink keeps the per-minute and per-hour rollups (`true` or `false`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub rollups: bool,
    /// HTTP only: payloads per request (a JSON array). 1 posts each on its own.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// How often nats-server syncs its JetStream store to disk: `default` (the server's own, every 2 min),
    /// `always` (every write), or an interval such as 1s or 250ms. Applies to the whole run, limits included.
    #[arg(long, default_value = "default", value_parser = NatsSync::parse)]
    pub nats_sync: NatsSync,
    /// Benchmark the sink alone instead: fill the metrics stream first, then
    /// run release sinks without and with rollups over it (twice each; once
    /// with --quick) and compare their rows/s with the raw COPY limit.
    #[arg(long)]
    pub sink_only: bool,
    /// Also measure the query API: write a fleet of 200 devices × 10 metrics × 28 h (20 million rows; --quick:
    /// 20 devices) into the table, time a 24-hour and a fleet-wide 1-hour aggregate in 1-minute buckets, and run
    /// an extra HTTP phase while 200 queries/s go to the query API.
    #[arg(long)]
    pub queries: bool,
    /// After the other phases, one more over HTTP (MQTT when only MQTT is loaded) at --rate (with --find-max: the
    /// highest rate sustained) with the alerter running as well (release binary, --alerter-rules rules over that
    /// phase's fleet): its evaluated points/s against the sink's rows/s, its CPU and memory. The other phases
    /// run without it, as before. `true` or `false`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub alerter: bool,
    /// Rules in the alerter's generated rules file (a mix of thresholds, aggregates, rates, equals and absence
    /// over the fleet's devices and metrics).
    #[arg(long, default_value_t = crate::alerter::DEFAULT_RULES, value_parser = rule_count)]
    pub alerter_rules: usize,
    /// Where the release binaries are (default: next to this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// `--alerter-rules`: 1 to 100,000.
fn rule_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=100_000).contains(&n) => Ok(n),
        _ => Err("expected a number of rules from 1 to 100000".to_owned()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportChoice {
    Http,
    Mqtt,
    Both,
}

impl Args {
    /// Length of each fixed-rate phase (a find-max step is a third of it).
    pub fn phase_duration(&self) -> Duration {
        self.duration.unwrap_or(if self.quick {
            Duration::from_secs(20)
        } else {
            Duration::from_secs(120)
        })
    }

    fn transports(&self) -> Result<Vec<simulator::Transport>> {
        let sparkplug = self.format == simulator::PayloadFormat::Sparkplug;
        Ok(match self.transport {
            TransportChoice::Http if sparkplug => anyhow::bail!("--format sparkplug travels over MQTT only"),
            TransportChoice::Http => vec![simulator::Transport::Http],
            TransportChoice::Mqtt => vec![simulator::Transport::Mqtt],
            TransportChoice::Both if sparkplug => vec![simulator::Transport::Mqtt],
            TransportChoice::Both => vec![simulator::Transport::Http, simulator::Transport::Mqtt],
        })
    }

    /// The route table the producer and transformer get for `--format`
    /// (none for items: the default decodes it).
    pub fn routes(&self) -> Option<&'static str> {
        match self.format {
            simulator::PayloadFormat::Items => None,
            simulator::PayloadFormat::Senml => Some(
                "[[routes]]\nname = \"senml\"\nformat = \"senml-json\"\ncontent_type = \"application/senml+json\"\n\n\
                 [[routes]]\nname = \"senml over mqtt\"\nformat = \"senml-json\"\ntopic = \"devices/#\"\n",
            ),
            // Over HTTP the InfluxDB endpoint's built-in route decodes it.
            simulator::PayloadFormat::Lineproto => Some(
                "[[routes]]\nname = \"line protocol over mqtt\"\nformat = \"line-protocol\"\ntopic = \"devices/#\"\n\
                 precision = \"ms\"\n",
            ),
            simulator::PayloadFormat::Sparkplug => {
                Some("[[routes]]\nname = \"sparkplug\"\nformat = \"sparkplug-b\"\ntopic = \"spBv1.0/#\"\n")
            }
        }
    }
}

/// Everything measured in one run.
#[derive(Debug, Clone)]
pub struct Report {
    pub args: Args,
    pub cores: usize,
    pub memory_gib: f64,
    pub limits: Limits,
    pub phases: Vec<Phase>,
    /// For --find-max: per transport, the highest sustained offered rate
    /// (payloads/s) and the rows/s committed at it.
    pub max_sustained: Vec<(String, Option<(f64, f64)>)>,
    /// With --queries.
    pub queries: Option<crate::queries::QueryFigures>,
}

/// One load phase at one rate over one transport.
#[derive(Debug, Clone)]
pub struct Phase {
    pub transport: String,
    pub offered_per_s: f64,
    pub load: Duration,
    /// Payloads the producer acknowledged, per second of load.
    pub accepted_per_s: f64,
    pub failed: u64,
    /// Raw messages (`TELEMETRY_RAW`) and `MetricBatch` messages (`TELEMETRY_METRICS`) added per second while
    /// the load ran: the producer's and the transformer's publish rates.
    pub raw_per_s: f64,
    pub batches_per_s: f64,
    /// Messages the phase added to each stream, load and drain, against the payloads accepted.
    pub framing: FramingCheck,
    /// Rows committed while the load ran, per second.
    pub committed_per_s: f64,
    /// Time after the load ended until every row was stored.
    pub drain: Duration,
    pub freshness: Freshness,
    pub loss: LossCheck,
    /// (process, CPU µs per committed row, peak RSS bytes)
    pub usage: Vec<(String, f64, u64)>,
    /// The alerter's figures, in the phase it ran in.
    pub alerter: Option<AlerterFigures>,
}

impl Phase {
    /// Kept up: nothing lost, the database committed at least 90% of the
    /// offered metric rate while the load ran, and drained within 2 s after.
    pub fn sustained(&self, metrics: u32) -> bool {
        self.loss.passed()
            && self.failed == 0
            && self.committed_per_s >= 0.9 * self.offered_per_s * f64::from(metrics)
            && self.drain <= Duration::from_secs(2)
    }
}

/// The servers and services under test.
struct Bench {
    _dir: tempfile::TempDir,
    nats: NatsServer,
    postgres: Postgres,
    mosquitto: Mosquitto,
    database_url: String,
    db: PgPool,
    js: async_nats::jetstream::Context,
    services: Vec<ServiceProcess>,
    /// Started for the alerter's phase only.
    alerter: Option<Alerter>,
    logs: PathBuf,
}

/// The alerter process and what it was started with.
struct Alerter {
    process: ServiceProcess,
    rules: usize,
    lateness: Duration,
}

/// The alerter's allowed lateness (`--lateness`): its default, set
/// explicitly so that the figures' window and the process agree.
const ALERTER_LATENESS: Duration = Duration::from_secs(5);
/// How long the alerter may take to catch up with the metrics stream, before
/// its phase and after the load.
const ALERTER_CATCH_UP: Duration = Duration::from_secs(120);
/// The alerter's clock tick: points waiting out the lateness are released on it.
const ALERTER_TICK: Duration = Duration::from_secs(1);

impl Bench {
    async fn start(bin_dir: &std::path::Path, args: &Args) -> Result<Self> {
        let (nats_sync, routes) = (args.nats_sync, args.routes());
        let dir = tempfile::Builder::new().prefix("tributary-bench-").tempdir()?;
        let nats = match nats_sync.server_config() {
            None => NatsServer::start()?,
            Some(config) => {
                NatsServer::start_with_config(&config).with_context(|| format!("nats-server with {config:?}"))?
            }
        };
        // A server with default durability (fsync on), unlike the tests'.
        let postgres = Postgres::start_in(&dir.path().join("postgres"), None)?;
        let mosquitto = Mosquitto::start()?;
        {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&postgres.url("postgres")).await?;
            sqlx::query("CREATE DATABASE tributary").execute(&mut conn).await?;
        }
        let database_url = postgres.url("tributary");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs)?;
        let nats_url = nats.url();
        let broker = format!("{}:{}", mosquitto.host(), mosquitto.port());
        let mut routes_env = Vec::new();
        if let Some(routes) = routes {
            let path = dir.path().join("routes.toml");
            std::fs::write(&path, routes)?;
            routes_env.push(("TRIBUTARY_ROUTES", path.display().to_string()));
        }
        let mut services = Vec::new();
        for n in 1..=args.producers {
            let mut env = vec![
                ("TRIBUTARY_NATS_URL", nats_url.clone()),
                ("TRIBUTARY_MQTT_BROKER", broker.clone()),
                ("TRIBUTARY_MQTT_TOPICS", "devices/#,spBv1.0/#".into()),
                ("TRIBUTARY_MQTT_CLIENT_ID", format!("bench-producer-{n}")),
            ];
            if args.producers > 1 {
                env.push(("TRIBUTARY_MQTT_SHARE_GROUP", "bench".into()));
            }
            env.extend(routes_env.iter().cloned());
            let logs = logs.join(format!("producer-{n}"));
            std::fs::create_dir_all(&logs)?;
            services.push(ServiceProcess::spawn_from(bin_dir, "producer", &logs, &env)?);
        }
        services.extend([
            ServiceProcess::spawn_from(
                bin_dir,
                "transformer",
                &logs,
                &[&[("TRIBUTARY_NATS_URL", nats_url.clone())][..], &routes_env].concat(),
            )?,
            ServiceProcess::spawn_from(
                bin_dir,
                "sink",
                &logs,
                &[
                    ("TRIBUTARY_NATS_URL", nats_url),
                    ("TRIBUTARY_DATABASE_URL", database_url.clone()),
                    ("TRIBUTARY_ROLLUPS", args.rollups.to_string()),
                ],
            )?,
            ServiceProcess::spawn_from(
                bin_dir,
                "query-api",
                &logs,
                &[
                    ("TRIBUTARY_DATABASE_URL", database_url.clone()),
                    ("TRIBUTARY_NATS_URL", nats.url()),
                ],
            )?,
        ]);
        for service in &mut services {
            service.wait_ready(Duration::from_secs(60)).await?;
        }
        let db = PgPool::connect(&database_url).await?;
        let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
        Ok(Self {
            _dir: dir,
            nats,
            postgres,
            mosquitto,
            database_url,
            db,
            js,
            services,
            alerter: None,
            logs,
        })
    }

    /// Starts the alerter with `rules` rules (the file's text) and waits
    /// until it is ready and has taken in what the metrics stream still
    /// holds of earlier phases (none of its rules match those fleets).
    async fn start_alerter(&mut self, bin_dir: &std::path::Path, rules: &str, count: usize) -> Result<()> {
        let path = self._dir.path().join("alert-rules.toml");
        std::fs::write(&path, rules)?;
        let mut process = ServiceProcess::spawn_from(
            bin_dir,
            "alerter",
            &self.logs,
            &[
                ("TRIBUTARY_NATS_URL", self.nats.url()),
                ("TRIBUTARY_ALERT_RULES", path.display().to_string()),
                ("TRIBUTARY_ALERT_LATENESS", format!("{}s", ALERTER_LATENESS.as_secs())),
            ],
        )?;
        process.wait_ready(Duration::from_secs(60)).await?;
        let client = reqwest::Client::new();
        let url = process.url();
        // Idle: nothing has come in for 3 s.
        let started = Instant::now();
        let mut last = Counters::read(&client, &url).await?.points;
        let mut since_change = Instant::now();
        while since_change.elapsed() < Duration::from_secs(3) && started.elapsed() < ALERTER_CATCH_UP {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = Counters::read(&client, &url).await?.points;
            if now != last {
                last = now;
                since_change = Instant::now();
            }
        }
        tracing::info!(
            rules = count,
            earlier_points = last,
            secs = started.elapsed().as_secs_f64(),
            "alerter up; it has taken in what the metrics stream held"
        );
        self.alerter = Some(Alerter {
            process,
            rules: count,
            lateness: ALERTER_LATENESS,
        });
        Ok(())
    }

    /// Stops the alerter (SIGTERM), which must exit cleanly.
    async fn stop_alerter(&mut self) -> Result<()> {
        if let Some(mut alerter) = self.alerter.take() {
            let status = alerter.process.terminate(Duration::from_secs(30)).await?;
            anyhow::ensure!(status.success(), "the alerter exited with {status}");
        }
        Ok(())
    }

    /// Every process that does the pipeline's work, and the load generator.
    fn usage(&self) -> Vec<(String, Usage)> {
        let mut all: Vec<(String, Usage)> = Vec::new();
        for service in &self.services {
            // Replicas of one service get a number: producer, producer-2, …
            let same = all.iter().filter(|(name, _)| name.starts_with(service.name())).count();
            let name = match same {
                0 => service.name().to_owned(),
                n => format!("{}-{}", service.name(), n + 1),
            };
            all.push((name, procs::usage(service.pid().unwrap_or(0))));
        }
        if let Some(alerter) = &self.alerter {
            all.push(("alerter".into(), procs::usage(alerter.process.pid().unwrap_or(0))));
        }
        let pid = |p: Option<u32>| p.unwrap_or(0);
        all.push(("nats-server".into(), procs::usage(pid(self.nats.pid()))));
        all.push(("postgres".into(), procs::usage_with_children(pid(self.postgres.pid()))));
        all.push(("mosquitto".into(), procs::usage(pid(self.mosquitto.pid()))));
        all.push(("simulator (bench process)".into(), procs::usage(std::process::id())));
        all
    }

    /// Restarts every process's peak-RSS count: a phase reports its own peak.
    fn reset_peaks(&self) {
        let pid = |p: Option<u32>| p.unwrap_or(0);
        let mut ok = self
            .services
            .iter()
            .chain(self.alerter.as_ref().map(|a| &a.process))
            .all(|s| procs::reset_peak(s.pid().unwrap_or(0)));
        ok &= procs::reset_peak(pid(self.nats.pid()));
        ok &= procs::reset_peak_with_children(pid(self.postgres.pid()));
        ok &= procs::reset_peak(pid(self.mosquitto.pid()));
        ok &= procs::reset_peak(std::process::id());
        if !ok {
            tracing::warn!("could not reset peak RSS counts: peaks include earlier phases");
        }
    }

    fn producer_url(&self) -> String {
        self.services[0].url()
    }

    /// The query API (started last).
    fn query_url(&self) -> String {
        self.services.last().map(ServiceProcess::url).unwrap_or_default()
    }

    async fn phase(
        &self,
        transport: simulator::Transport,
        rate: f64,
        load: Duration,
        seed: u64,
        args: &Args,
    ) -> Result<Phase> {
        let mut config = match transport {
            simulator::Transport::Http => {
                let mut c = simulator::Config::http(&self.producer_url());
                c.source = "bench".into();
                c.batch = args.batch;
                c
            }
            simulator::Transport::Mqtt => simulator::Config::mqtt(self.mosquitto.host(), self.mosquitto.port()),
        };
        config.format = args.format;
        config.devices = args.devices;
        config.metrics = args.metrics;
        config.rate = rate;
        config.duration = Some(load);
        config.seed = seed;
        config.concurrency = 256;

        // The load's shape is what it was before the simulator had incidents (a silent device sends less).
        config.incidents = false;

        let client = reqwest::Client::new();
        let alerter_url = self.alerter.as_ref().map(|a| a.process.url());
        let alerter_before = match &alerter_url {
            Some(url) => Some(Counters::read(&client, url).await?),
            None => None,
        };
        let since = measure::now_us();
        let counts_before = measure::stream_counts(&self.js).await?;
        self.reset_peaks();
        let before = self.usage();
        let started = Instant::now();
        // The alerter's counters once its allowed lateness and a clock tick have passed since the load began:
        // where the window its evaluated points are counted in starts.
        let alerter_shifted_start = match (&self.alerter, &alerter_url) {
            (Some(alerter), Some(url)) => {
                let at = tokio::time::Instant::from_std(started + alerter.lateness + ALERTER_TICK);
                let (client, url) = (client.clone(), url.clone());
                Some(tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    Counters::read(&client, &url).await
                }))
            }
            _ => None,
        };
        let sent = simulator::run(config, CancellationToken::new())
            .await
            .context("simulator")?;
        let load_elapsed = started.elapsed();
        let alerter_at_end = match &alerter_url {
            Some(url) => Some(Counters::read(&client, url).await?),
            None => None,
        };
        let committed_during_load = measure::stored_rows(&self.db, since).await?;
        let during_load = measure::stream_counts(&self.js).await?.since(&counts_before);
        measure::wait_drained(&self.js, Duration::from_secs(15)).await?;
        let drain = started.elapsed().saturating_sub(load_elapsed);
        let mut after = self.usage();
        let alerter = match (&self.alerter, alerter_before, alerter_shifted_start, alerter_at_end) {
            (Some(alerter), Some(before), Some(shifted_start), Some(at_end)) => {
                let counters = AlerterCounters {
                    before,
                    shifted_start: shifted_start.await??,
                    at_end,
                };
                let figures = alerter_figures(
                    &client,
                    alerter,
                    started + load_elapsed,
                    load_elapsed,
                    sent.metrics_sent,
                    counters,
                )
                .await?;
                // Its CPU until it was done with the phase's points (the rest's: until the pipeline drained).
                if let Some(entry) = after.iter_mut().find(|(name, _)| name == "alerter") {
                    entry.1 = procs::usage(alerter.process.pid().unwrap_or(0));
                }
                Some(figures)
            }
            _ => None,
        };
        let added = measure::stream_counts(&self.js).await?.since(&counts_before);
        let loss = measure::loss_check(&self.db, since, sent.metrics_sent).await?;
        let freshness = measure::freshness(&self.db, since).await?;
        let rows = loss.stored.max(1) as f64;
        let usage = before
            .iter()
            .zip(&after)
            .map(|((name, b), (_, a))| {
                (
                    name.clone(),
                    a.cpu_us.saturating_sub(b.cpu_us) as f64 / rows,
                    a.peak_rss,
                )
            })
            .collect();
        let secs = load_elapsed.as_secs_f64();
        Ok(Phase {
            transport: format!("{transport:?}").to_lowercase(),
            offered_per_s: rate,
            load: load_elapsed,
            accepted_per_s: sent.acknowledged as f64 / secs,
            failed: sent.failed,
            raw_per_s: during_load.raw as f64 / secs,
            batches_per_s: during_load.metrics as f64 / secs,
            framing: FramingCheck {
                payloads: sent.acknowledged,
                raw_messages: added.raw,
                metric_messages: added.metrics,
            },
            committed_per_s: committed_during_load as f64 / secs,
            drain,
            freshness,
            loss,
            usage,
            alerter,
        })
    }

    async fn stop(mut self) -> Result<()> {
        self.stop_alerter().await?;
        for service in &mut self.services {
            let status = service.terminate(Duration::from_secs(30)).await?;
            anyhow::ensure!(status.success(), "{} exited with {status}", service.name());
        }
        Ok(())
    }
}

/// The alerter's counters at the moments a phase's figures are taken between.
struct AlerterCounters {
    /// Before the load began.
    before: Counters,
    /// Its allowed lateness and a clock tick after the load began.
    shifted_start: Counters,
    /// When the load ended.
    at_end: Counters,
}

/// What the alerter did in a phase whose load ran for `load` until `load_end`, `points` of them acknowledged:
/// points taken in per second while the load ran; points evaluated per second over a window as long as the
/// load, starting and ending its allowed lateness and a clock tick later (a point waits that long by design,
/// as a row waits for the sink's batch); when it had taken in every point; its transitions.
async fn alerter_figures(
    client: &reqwest::Client,
    alerter: &Alerter,
    load_end: Instant,
    load: Duration,
    points: u64,
    counters: AlerterCounters,
) -> Result<AlerterFigures> {
    let AlerterCounters {
        before,
        shifted_start,
        at_end,
    } = counters;
    let url = alerter.process.url();
    let evaluated_by = load_end + alerter.lateness + ALERTER_TICK;
    let mut evaluated = None;
    let mut caught_up = None;
    let mut last = at_end;
    let mut last_change = Instant::now();
    loop {
        let now = Counters::read(client, &url).await?;
        let at = Instant::now();
        if now.points != last.points {
            last_change = at;
        }
        last = now;
        if caught_up.is_none() && now.points - before.points >= points as f64 {
            caught_up = Some(at.saturating_duration_since(load_end));
        }
        if evaluated.is_none() && at >= evaluated_by {
            evaluated = Some(now.evaluated - shifted_start.evaluated);
        }
        let stuck = last_change.elapsed() > Duration::from_secs(15);
        if evaluated.is_some() && (caught_up.is_some() || stuck || at.duration_since(load_end) > ALERTER_CATCH_UP) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = load.as_secs_f64().max(1e-3);
    Ok(AlerterFigures {
        rules: alerter.rules,
        lateness: alerter.lateness,
        points_per_s: (at_end.points - before.points) / secs,
        evaluated_per_s: evaluated.unwrap_or_default() / secs,
        caught_up,
        transitions: (last.transitions - before.transitions).max(0.0) as u64,
    })
}

/// Runs the benchmark and returns its report.
pub async fn run(args: Args) -> Result<Report> {
    let bin_dir = args.bin_dir.clone().unwrap_or_else(procs::default_bin_dir);
    let samples = Samples::new(args.metrics)?;
    let transports = args.transports()?;
    let mut bench = Bench::start(&bin_dir, &args).await?;
    tracing::info!(nats_sync = %args.nats_sync, "servers and services up");
    let mut queries = None;
    if args.queries {
        let devices = if args.quick { 20 } else { 200 };
        let started = Instant::now();
        let rows = crate::queries::fill(&bench.database_url, devices).await?;
        let fill = started.elapsed();
        let base = bench.query_url();
        let n = devices as usize;
        let series_24h = crate::queries::sequential(&base, |i| crate::queries::series_query(i % n), 200).await?;
        let fleet_1h = crate::queries::sequential(&base, |_| crate::queries::fleet_query(), 200).await?;
        tracing::info!(?series_24h, ?fleet_1h, "query latencies");
        queries = Some(crate::queries::QueryFigures {
            rows,
            fill,
            series_24h,
            fleet_1h,
            under_load: Default::default(),
            offered_qps: 200.0,
        });
    }
    let mut phases = Vec::new();
    let mut max_sustained = Vec::new();
    let mut seed = 100;
    for &transport in &transports {
        if args.find_max {
            let step = args.phase_duration() / 3;
            let mut rate = args.rate;
            let mut best = None;
            loop {
                seed += 1;
                tracing::info!(?transport, rate, "find-max step");
                let phase = bench.phase(transport, rate, step, seed, &args).await?;
                let kept_up = phase.sustained(args.metrics);
                let committed = phase.committed_per_s;
                phases.push(phase);
                if !kept_up {
                    break;
                }
                best = Some((rate, committed));
                rate *= 1.5;
            }
            max_sustained.push((format!("{transport:?}").to_lowercase(), best));
        } else {
            seed += 1;
            tracing::info!(?transport, rate = args.rate, "load phase");
            phases.push(
                bench
                    .phase(transport, args.rate, args.phase_duration(), seed, &args)
                    .await?,
            );
        }
    }
    if let Some(figures) = &mut queries {
        // The same HTTP phase again, while 200 queries/s run.
        seed += 1;
        let stop = CancellationToken::new();
        let load = tokio::spawn(crate::queries::steady(
            bench.query_url(),
            figures.offered_qps,
            stop.clone(),
            if args.quick { 20 } else { 200 },
        ));
        tracing::info!(rate = args.rate, "load phase with 200 queries/s");
        let mut phase = bench
            .phase(
                simulator::Transport::Http,
                args.rate,
                args.phase_duration(),
                seed,
                &args,
            )
            .await?;
        stop.cancel();
        figures.under_load = load.await?;
        phase.transport = "http + 200 queries/s".to_owned();
        phases.push(phase);
    }
    if args.alerter {
        // HTTP unless only MQTT is loaded; at the highest sustained rate with --find-max.
        let transport = transports.first().copied().unwrap_or(simulator::Transport::Http);
        let name = format!("{transport:?}").to_lowercase();
        let rate = max_sustained
            .iter()
            .find(|(t, _)| *t == name)
            .and_then(|(_, best)| best.map(|(rate, _)| rate))
            .unwrap_or(args.rate);
        seed += 1;
        let (device_ids, metric_names) = crate::alerter::stored_names(args.format, args.devices, args.metrics, seed);
        let rules = crate::alerter::rules(&device_ids, &metric_names, args.alerter_rules);
        bench.start_alerter(&bin_dir, &rules, args.alerter_rules).await?;
        tracing::info!(
            ?transport,
            rate,
            rules = args.alerter_rules,
            "load phase with the alerter"
        );
        let mut phase = bench.phase(transport, rate, args.phase_duration(), seed, &args).await?;
        bench.stop_alerter().await?;
        phase.transport = format!("{name} + alerter");
        phases.push(phase);
    }
    // The limits come after the load phases: their scratch streams briefly
    // hold hundreds of thousands of messages, which would otherwise show in
    // the phases' memory figures for nats-server.
    tracing::info!("load phases done; measuring this machine's limits");
    let limits = limits::measure(
        &Targets {
            nats_url: &bench.nats.url(),
            database_url: &bench.database_url,
            mqtt_host: bench.mosquitto.host(),
            mqtt_port: bench.mosquitto.port(),
        },
        &samples,
        if args.quick { 30_000 } else { 200_000 },
        // A store that syncs every write (`--nats-sync always`) makes each JetStream write far slower: bound
        // the time each measurement spends sending, not only its count.
        Duration::from_secs(if args.quick { 10 } else { 30 }),
    )
    .await?;

    bench.stop().await?;
    Ok(Report {
        args,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: memory_gib(),
        limits,
        phases,
        max_sustained,
        queries,
    })
}

fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
        let parse =
            |flags: &[&str]| Args::try_parse_from(std::iter::once("tributary-bench").chain(flags.iter().copied()));
        assert_eq!(parse(&[]).unwrap().nats_sync, NatsSync::Default);
        assert_eq!(parse(&["--nats-sync", "always"]).unwrap().nats_sync, NatsSync::Always);
        assert_eq!(
            parse(&["--nats-sync", "1s"]).unwrap().nats_sync,
            NatsSync::Every(Duration::from_secs(1))
        );
        let error = parse(&["--nats-sync", "soon"]).unwrap_err().to_string();
        assert!(error.contains("expected `default`, `always` or a duration"), "{error}");
    }

    #[test]
    fn each_format_gets_a_route_table_that_decodes_it() {
        use simulator::PayloadFormat;
        use tributary_formats::{Decoder, RouteTable, Transport};
        let parse =
            |flags: &[&str]| Args::try_parse_from(std::iter::once("tributary-bench").chain(flags.iter().copied()));
        let table = |args: &Args| RouteTable::from_toml(args.routes().expect("routes")).expect("valid");
        assert_eq!(parse(&[]).unwrap().routes(), None);

        let senml = parse(&["--format", "senml"]).unwrap();
        assert_eq!(senml.format, PayloadFormat::Senml);
        let routes = table(&senml);
        let find =
            |transport, topic, content_type| routes.find(transport, "bench", topic, content_type).map(|r| &r.decoder);
        assert_eq!(
            find(Transport::Http, "", "application/senml+json"),
            Some(&Decoder::SenmlJson)
        );
        assert_eq!(find(Transport::Mqtt, "devices/d1", ""), Some(&Decoder::SenmlJson));

        let routes = table(&parse(&["--format", "lineproto"]).unwrap());
        assert!(matches!(
            routes
                .find(Transport::Mqtt, "bench", "devices/d1", "")
                .map(|r| &r.decoder),
            Some(Decoder::LineProtocol(_))
        ));

        let sparkplug = parse(&["--format", "sparkplug"]).unwrap();
        let routes = table(&sparkplug);
        assert_eq!(
            routes
                .find(Transport::Mqtt, "bench", "spBv1.0/devices/NDATA/d1", "")
                .map(|r| &r.decoder),
            Some(&Decoder::SparkplugB)
        );
        assert_eq!(sparkplug.transports().unwrap(), vec![simulator::Transport::Mqtt]);
        assert!(
            parse(&["--format", "sparkplug", "--transport", "http"])
                .unwrap()
                .transports()
                .is_err()
        );
    }
}
