//! The server configurations in `deploy/` are the ones the servers run with.

use std::time::Duration;

use anyhow::Result;
use tributary_testkit::NatsServer;

#[tokio::test]
async fn nats_runs_with_the_deploy_configuration() -> Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/nats-server.conf");
    let port = tributary_testkit::free_port()?;
    let config = format!("{}\nhttp: \"127.0.0.1:{port}\"\n", std::fs::read_to_string(path)?);
    let _nats = NatsServer::start_with_config(&config)?;
    let url = format!("http://127.0.0.1:{port}/varz");
    tributary_testkit::wait_until(Duration::from_secs(10), "nats-server's /varz", || async {
        reqwest::get(&url).await.is_ok_and(|r| r.status().is_success())
    })
    .await?;
    let varz: serde_json::Value = reqwest::get(&url).await?.json().await?;
    // The file store is synced every second (README, "Durability of an acknowledgement").
    assert_eq!(varz["jetstream"]["config"]["sync_interval"], 1_000_000_000u64, "{varz}");
    // Room for a 1 MiB payload in its envelope.
    assert!(varz["max_payload"].as_u64().is_some_and(|n| n > 1 << 20), "{varz}");
    // Room for the four streams at their default limits (raw 4, metrics 4,
    // dead letters 1, alert transitions 1 GiB).
    assert!(
        varz["jetstream"]["config"]["max_storage"]
            .as_u64()
            .is_some_and(|n| n >= 10 << 30),
        "{varz}"
    );
    Ok(())
}
