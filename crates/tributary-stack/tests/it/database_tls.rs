//! PostgreSQL over TLS (issue 10): a server that takes only TLS
//! connections, with a certificate from a test CA. The sink stores and the
//! query API reads through it with `verify-full` and the CA named by a
//! flag; a plain connection and one that cannot verify the certificate are
//! refused with errors that say so.

use anyhow::{Context, Result};
use tributary_runtime::CancellationToken;
use tributary_stack::{Options, Part, Servers};
use tributary_store::DatabaseTls;
use tributary_testkit::Postgres;

use crate::{DEADLINE, SAMPLE, SAMPLE_DEVICE, TestCa};

#[tokio::test]
async fn the_sink_and_the_query_api_talk_to_postgresql_over_verified_tls() -> Result<()> {
    let ca = TestCa::new()?;
    let (cert, key) = ca.issue("postgres", &["127.0.0.1"])?;
    let postgres = tokio::task::spawn_blocking(move || Postgres::start_tls(&cert, &key)).await??;
    let dir = tempfile::tempdir()?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem())?;
    let url = postgres.url("postgres");
    let verified = DatabaseTls {
        ssl_mode: Some("verify-full".into()),
        ca_file: Some(ca_file.clone()),
        ..Default::default()
    };

    // Refused: no TLS at all, and TLS whose certificate the system's CAs
    // do not vouch for.
    let ping = |tls: DatabaseTls| {
        let url = url.clone();
        async move {
            let store = tributary_store::Store::connect_lazy(&tributary_store::StoreConfig {
                max_connections: 1,
                tls,
                ..tributary_store::StoreConfig::new(url)
            })?;
            store.ping().await.map_err(anyhow::Error::from)
        }
    };
    let plain = ping(DatabaseTls {
        ssl_mode: Some("disable".into()),
        ..Default::default()
    })
    .await
    .expect_err("a plain connection is refused");
    assert!(plain.to_string().contains("no encryption"), "{plain}");
    let unverified = ping(DatabaseTls {
        ssl_mode: Some("verify-full".into()),
        ..Default::default()
    })
    .await
    .expect_err("an unknown CA is refused");
    assert!(
        unverified.to_string().to_lowercase().contains("certificate"),
        "{unverified}"
    );
    ping(verified.clone()).await.context("verify-full with the CA")?;

    // The pipeline, its sink and query API on the TLS database.
    let servers = Servers::start_temporary().await?;
    let options = Options::default();
    let producer = tributary_stack::start_producer(&servers, &options).await?;
    let transformer = tributary_stack::start_transformer(&servers, &options).await?;
    let mut sink_config = sink::Config::for_servers(&servers.nats.url(), &url);
    sink_config.database_tls = verified.clone();
    sink_config.batch_linger = options.sink_linger;
    let sink = Part::new("sink", sink::start(sink_config, CancellationToken::new()).await?);
    let mut query_config = query_api::Config::for_database(&url);
    query_config.nats = tributary_runtime::NatsArgs::with_url(servers.nats.url());
    query_config.database_tls = verified;
    let query = Part::new(
        "query-api",
        query_api::start(query_config, CancellationToken::new()).await?,
    );
    for part in [&producer, &transformer, &sink, &query] {
        part.wait_ready(DEADLINE).await?;
    }
    let http = reqwest::Client::new();
    let posted = http
        .post(format!("{}/v1/ingest/tls", producer.url()))
        .header("content-type", "application/json")
        .body(SAMPLE)
        .send()
        .await?;
    assert_eq!(posted.status(), 202);
    let series = format!(
        "{}/v1/series?device={SAMPLE_DEVICE}&metric=APFluid&from=2017-09-30T00:00:00Z&to=2017-10-01T00:00:00Z",
        query.url()
    );
    let read = || {
        let (http, series) = (http.clone(), series.clone());
        async move {
            let response = http.get(&series).send().await?;
            anyhow::ensure!(response.status() == 200, "status {}", response.status());
            Ok(response.json::<serde_json::Value>().await?)
        }
    };
    tributary_testkit::wait_until(DEADLINE, "the point read back over TLS", || async {
        read()
            .await
            .is_ok_and(|body| body["points"].as_array().is_some_and(|p| !p.is_empty()))
    })
    .await?;
    let body = read().await?;
    assert_eq!(body["points"][0]["value"], 27.1245, "{body}");
    for part in [producer, transformer, sink, query] {
        part.stop().await?;
    }
    Ok(())
}
