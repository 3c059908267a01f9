//! End-to-end tests: real nats-server, PostgreSQL and mosquitto (test kit),
//! the four services in-process, traffic over real HTTP and MQTT.

mod alerts;
mod alerts_query;
mod cluster;
mod dashboard;
mod database_tls;
mod deploy;
mod door;
mod faults;
mod feeds;
mod formats;
mod framing;
mod influx;
mod least_privilege;
mod manifests;
mod mqtt_bridge;
mod pipeline;
mod processes;
mod query;
mod rollups;
mod sparkplug;
mod webhooks;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use tributary_stack::{Options, Servers, Services};

/// The reference deployment's message (issue 2, acceptance 1).
pub const SAMPLE: &str = r#"{"_id":"594d186e51b3bc4eb0abafd9","context":"594e7bfb463aee1301da2d6b","loc":[45.13887627405175,50.75920624235248],"timestamp":"2017-09-30T12:50:17.765Z","items":{"APFluid":"27.1245","AvTFluid":"35.4900","AvQvFluid":"309.1259","AvQmOil":"254.4323","AvQvnGas":"27035.2344","Adfld":"833.0001","Adgas":"0.8990","AvWater":"0.0000","rssi":-107,"snr":7.2}}"#;
pub const SAMPLE_DEVICE: &str = "594d186e51b3bc4eb0abafd9";

/// How long anything in these tests may take to show up.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running pipeline plus clients to look inside it.
pub struct Harness {
    pub servers: Servers,
    pub services: Services,
    pub http: reqwest::Client,
    pub js: async_nats::jetstream::Context,
    pub db: sqlx::PgPool,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        Self::start_with(&Options::default()).await
    }

    pub async fn start_with(options: &Options) -> Result<Self> {
        let servers = Servers::start_temporary().await?;
        let services = Services::start(&servers, options).await?;
        let client = async_nats::connect(servers.nats.url())
            .await
            .context("test NATS client")?;
        let db = sqlx::PgPool::connect(&servers.database_url)
            .await
            .context("test database client")?;
        Ok(Self {
            servers,
            services,
            http: reqwest::Client::new(),
            js: async_nats::jetstream::new(client),
            db,
        })
    }

    pub async fn post(&self, source: &str, body: &str) -> Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}/v1/ingest/{source}", self.services.producer.url()))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await?)
    }

    /// Posts and insists on `202 Accepted`.
    pub async fn post_accepted(&self, source: &str, body: &str) -> Result<Value> {
        let response = self.post(source, body).await?;
        let status = response.status();
        let json: Value = response.json().await?;
        anyhow::ensure!(status == 202, "expected 202, got {status}: {json}");
        Ok(json)
    }

    pub async fn rows(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM metric_events")
            .fetch_one(&self.db)
            .await?)
    }

    /// Waits until both durable consumers have nothing pending or unacked:
    /// everything accepted so far is stored (or dead-lettered).
    pub async fn wait_drained(&self) -> Result<()> {
        let js = self.js.clone();
        tributary_testkit::wait_until(DEADLINE, "the pipeline to drain", || {
            let js = js.clone();
            async move {
                let mut idle = true;
                for (stream, durable) in [("TELEMETRY_RAW", "transformer"), ("TELEMETRY_METRICS", "sink")] {
                    let Ok(stream) = js.get_stream(stream).await else {
                        return false;
                    };
                    let Ok(mut consumer) = stream
                        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(durable)
                        .await
                    else {
                        return false;
                    };
                    let Ok(info) = consumer.info().await else { return false };
                    idle &= info.num_pending == 0 && info.num_ack_pending == 0;
                }
                idle
            }
        })
        .await
    }

    /// `GET /v1/series` for one metric of the sample device.
    pub async fn series(&self, device: &str, metric: &str) -> Result<(u16, Value)> {
        let response = self
            .http
            .get(format!(
                "{}/v1/series?device={device}&metric={metric}&from=2017-09-30T00:00:00Z&to=2017-10-01T00:00:00Z",
                self.services.query_api.url()
            ))
            .send()
            .await?;
        Ok((response.status().as_u16(), response.json().await?))
    }

    /// Every message in the dead-letter stream: (subject, headers).
    pub async fn dead_letters(&self) -> Result<Vec<(String, async_nats::HeaderMap, Vec<u8>)>> {
        let mut stream = self.js.get_stream("TELEMETRY_DLQ").await?;
        let last = stream.info().await?.state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let message = stream.get_raw_message(seq).await?;
            out.push((message.subject.to_string(), message.headers, message.payload.to_vec()));
        }
        Ok(out)
    }

    pub async fn stop(self) -> Result<()> {
        self.services.stop().await
    }
}

/// A CA, and a certificate it signed for `names` (PEM: certificate, key).
pub struct TestCa {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub fn new() -> Result<Self> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Tributary test CA");
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    pub fn issue(&self, common_name: &str, names: &[&str]) -> Result<(String, String)> {
        let mut params = rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Publishes one QoS 1 message with `options` (a client of its own) and
/// waits for the broker's PUBACK, then disconnects.
pub async fn publish_acknowledged(
    options: rumqttc::MqttOptions,
    topic: &str,
    payload: Vec<u8>,
    retain: bool,
) -> Result<()> {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.publish(topic, QoS::AtLeastOnce, retain, payload).await?;
    tokio::time::timeout(DEADLINE, async {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await? {
                return anyhow::Ok(());
            }
        }
    })
    .await
    .context("the broker's PUBACK")??;
    client.disconnect().await?;
    let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    Ok(())
}

/// One server-sent event.
#[derive(Debug, Default)]
pub struct Sse {
    pub event: String,
    pub id: Option<String>,
    /// Its data as JSON (a JSON string if it is not JSON).
    pub data: Value,
}

/// Reads server-sent events from a streaming response.
pub struct SseReader {
    response: reqwest::Response,
    buffer: String,
}

impl SseReader {
    /// Opens `<base>/v1/live?<params>`, resuming after `last_event_id`.
    pub async fn open(http: &reqwest::Client, base: &str, params: &str, last_event_id: Option<&str>) -> Result<Self> {
        let mut request = http.get(format!("{base}/v1/live?{params}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        anyhow::ensure!(response.status() == 200, "live: {}", response.status());
        Ok(Self {
            response,
            buffer: String::new(),
        })
    }

    /// The next event (comments and keep-alives skipped), within `DEADLINE`.
    pub async fn next(&mut self) -> Result<Sse> {
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(end) = self.buffer.find("\n\n") {
                    let block: String = self.buffer.drain(..end + 2).collect();
                    let (mut event, mut data) = (Sse::default(), String::new());
                    for line in block.lines() {
                        if let Some(v) = line.strip_prefix("event:") {
                            event.event = v.trim().to_owned();
                        } else if let Some(v) = line.strip_prefix("id:") {
                            event.id = Some(v.trim().to_owned());
                        } else if let Some(v) = line.strip_prefix("data:") {
                            data.push_str(v.trim());
                        }
                    }
                    if !event.event.is_empty() {
                        event.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                        return Ok(event);
                    }
                    continue;
                }
                let chunk = self.response.chunk().await?.context("the live stream ended")?;
                self.buffer.push_str(&String::from_utf8_lossy(&chunk));
            }
        })
        .await
        .context("waiting for a live event")?
    }
}
