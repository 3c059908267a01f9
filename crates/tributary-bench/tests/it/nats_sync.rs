//! `--nats-sync` reaches nats-server: the configuration it writes is the one
//! the server runs with, as the server's own monitoring endpoint reports it.

use std::time::Duration;

use anyhow::Result;
use tributary_bench::nats_sync::NatsSync;
use tributary_testkit::NatsServer;

/// Starts nats-server with `sync`'s configuration plus a monitoring port, and returns its `/varz`
/// `jetstream.config` (`sync_interval` in nanoseconds, `sync_always` when set).
async fn jetstream_config(sync: NatsSync) -> Result<serde_json::Value> {
    let port = tributary_testkit::free_port()?;
    let config = format!(
        "{}http: \"127.0.0.1:{port}\"\n",
        sync.server_config().unwrap_or_default()
    );
    let nats = NatsServer::start_with_config(&config)?;
    let url = format!("http://127.0.0.1:{port}/varz");
    tributary_testkit::wait_until(Duration::from_secs(10), "nats-server's /varz", || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())
    })
    .await?;
    let varz: serde_json::Value = reqwest::get(&url).await?.json().await?;
    // JetStream still works with the file.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    assert_eq!(js.query_account().await?.streams, 0);
    Ok(varz["jetstream"]["config"].clone())
}

#[tokio::test]
async fn the_sync_setting_is_the_one_the_server_runs_with() -> Result<()> {
    let always = jetstream_config(NatsSync::Always).await?;
    assert_eq!(always["sync_always"], true, "{always}");

    let every = jetstream_config(NatsSync::parse("1500ms").map_err(anyhow::Error::msg)?).await?;
    assert_eq!(every["sync_interval"], 1_500_000_000u64, "{every}");
    assert!(every.get("sync_always").is_none_or(|v| v == false), "{every}");

    // Without a setting the server keeps its own default: 2 minutes.
    let default = jetstream_config(NatsSync::Default).await?;
    assert_eq!(default["sync_interval"], 120_000_000_000u64, "{default}");
    assert!(default.get("sync_always").is_none_or(|v| v == false), "{default}");
    Ok(())
}

#[tokio::test]
async fn a_configuration_the_server_refuses_fails_the_start_with_its_reason() {
    let error = NatsServer::start_with_config("jetstream {\n  sync_interval: \"soon\"\n}\n").unwrap_err();
    assert!(format!("{error:#}").contains("sync_interval"), "{error:#}");
}
