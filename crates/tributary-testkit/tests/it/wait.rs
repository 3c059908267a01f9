use std::time::Duration;

use tributary_testkit::{free_port, wait_until, wait_until_blocking};

#[tokio::test]
async fn wait_until_names_what_timed_out() {
    let err = wait_until(Duration::from_millis(30), "the moon to turn blue", || async { false })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the moon to turn blue"), "{err}");
}

#[tokio::test]
async fn wait_until_returns_once_the_probe_holds() -> tributary_testkit::Result<()> {
    let mut polls = 0;
    wait_until(Duration::from_secs(5), "the third poll", || {
        polls += 1;
        let done = polls == 3;
        async move { done }
    })
    .await?;
    assert_eq!(polls, 3);
    Ok(())
}

#[test]
fn wait_until_blocking_polls_until_true_or_deadline() {
    let mut polls = 0;
    wait_until_blocking(Duration::from_secs(5), "the third poll", || {
        polls += 1;
        polls == 3
    })
    .unwrap();
    assert_eq!(polls, 3);
    let err = wait_until_blocking(Duration::from_millis(20), "nothing", || false).unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");
}

#[test]
fn free_port_is_bindable() {
    let port = free_port().unwrap();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}
