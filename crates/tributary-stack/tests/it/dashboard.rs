//! The dashboard in a real browser (issue 11, acceptance 3): headless
//! Chromium, driven through ChromeDriver's WebDriver protocol (plain HTTP
//! and JSON), loads the page from a running stack, sees a point posted after
//! the page loaded reach the chart, sees an alert published after the page
//! loaded (the alerts stream made only then) appear as firing and go once
//! resolved, switches to the historical view, and saves a screenshot
//! (`target/tmp/dashboard.png`).

use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{DEADLINE, Harness};

/// A ChromeDriver child and one browser session of it.
struct Browser {
    driver: tokio::process::Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Result<Self> {
        for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            if !std::path::Path::new(tool).exists() {
                bail!("{tool} is missing: install Debian's chromium and chromium-driver (`just install-servers`)");
            }
        }
        let port = tributary_testkit::free_port()?;
        let driver = tokio::process::Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting chromedriver")?;
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        tributary_testkit::wait_until(DEADLINE, "chromedriver ready", || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                match http.get(format!("{base}/status")).send().await {
                    Ok(r) => r.json::<Value>().await.is_ok_and(|s| s["value"]["ready"] == true),
                    Err(_) => false,
                }
            }
        })
        .await?;
        let profile = tempfile::tempdir()?;
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| (*a).to_owned())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
            }}}))
            .send()
            .await?
            .json()
            .await?;
        let session = created["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no browser session: {created}"))?
            .to_owned();
        Ok(Self {
            driver,
            base,
            session,
            http,
            _profile: profile,
        })
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request.send().await?.json().await?;
        if answer["value"].get("error").is_some() {
            bail!("webdriver {path}: {}", answer["value"]);
        }
        Ok(answer["value"].clone())
    }

    async fn open(&self, url: &str) -> Result<()> {
        self.command(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body) in the page and gives back what it returns.
    async fn run(&self, script: &str) -> Result<Value> {
        self.command(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Waits until `script` returns true.
    async fn wait_for(&self, what: &str, script: &str) -> Result<()> {
        let waited = tributary_testkit::wait_until(DEADLINE, what, || async {
            self.run(script).await.is_ok_and(|v| v == true)
        })
        .await;
        if waited.is_err() {
            let state = self
                .run("return JSON.stringify({banner: document.body.innerText.slice(0, 2000)})")
                .await
                .unwrap_or_default();
            return waited.with_context(|| format!("the page showed: {state}"));
        }
        Ok(())
    }

    async fn screenshot(&self, path: &std::path::Path) -> Result<()> {
        let encoded = self.command(reqwest::Method::GET, "/screenshot", None).await?;
        let png = base64_decode(encoded.as_str().context("a base64 screenshot")?)?;
        anyhow::ensure!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::write(path, png)?;
        Ok(())
    }

    async fn close(mut self) -> Result<()> {
        let _ = self.command(reqwest::Method::DELETE, "", None).await;
        let _ = self.driver.kill().await;
        Ok(())
    }
}

/// Standard base64 (the WebDriver screenshot's encoding).
fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let value = |c: u8| -> Result<u32> {
        Ok(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("not base64: {:?}", c as char),
        }
        .into())
    };
    let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().take_while(|&b| b != b'=').collect();
        let mut n = 0u32;
        for (i, &b) in data.iter().enumerate() {
            n |= value(b)? << (18 - 6 * i);
        }
        let take = data.len().saturating_sub(1);
        out.extend_from_slice(&n.to_be_bytes()[1..1 + take]);
    }
    Ok(out)
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn reading(device: &str, at_ms: u128, temp: f64) -> String {
    format!(r#"{{"_id":"{device}","loc":[13.4,52.5],"timestamp":{at_ms},"items":{{"temp":{temp},"rpm":1200}}}}"#)
}

#[tokio::test]
async fn the_dashboard_draws_live_points_and_a_history_in_a_real_browser() -> Result<()> {
    let h = Harness::start().await?;
    // A minute of readings before the page opens.
    let start = now_ms() - 60_000;
    for i in 0..6u32 {
        h.post_accepted(
            "dash",
            &reading("pump-1", start + u128::from(i) * 10_000, 20.0 + f64::from(i)),
        )
        .await?;
    }
    h.wait_drained().await?;
    let browser = Browser::start().await?;
    browser.open(&format!("{}/", h.services.query_api.url())).await?;
    let chart = r#"document.querySelector('.chart[data-metric="temp"]')"#;
    browser
        .wait_for(
            "the temp chart with the stored minute",
            &format!("const c = {chart}; return !!c && Number(c.dataset.points) >= 6"),
        )
        .await?;
    assert_eq!(browser.run("return document.body.dataset.mode").await?, "live");
    assert_eq!(
        browser.run("return document.querySelector('#device').value").await?,
        "pump-1"
    );

    // A point posted now reaches the chart through the live stream.
    let before = browser.run(&format!("return Number({chart}.dataset.points)")).await?;
    h.post_accepted("dash", &reading("pump-1", now_ms(), 99.5)).await?;
    browser
        .wait_for(
            "the new point on the chart",
            &format!("return Number({chart}.dataset.points) > {before}"),
        )
        .await?;
    let latest = browser
        .run(&format!("return {chart}.querySelector('.latest').textContent"))
        .await?;
    assert!(
        latest.as_str().is_some_and(|t| t.contains("99.5")),
        "latest value shown: {latest}"
    );
    browser
        .wait_for(
            "the device on the map",
            "return !!document.querySelector('circle.device-dot[data-device=\"pump-1\"]')",
        )
        .await?;

    // Alerts: none while no alerter has made the stream; a firing one shows
    // up live, and goes when resolved (a pending one of another rule stays).
    {
        use crate::alerts_query::{alert, create_alerts_stream, publish_alert};
        use tributary_schema::{AlertSeverity, AlertState};
        browser
            .wait_for(
                "the note that there is no alerts stream",
                "return document.querySelector('#alerts-note').textContent.includes('No alerts stream')",
            )
            .await?;
        create_alerts_stream(&h.js).await?;
        let hot = |state| alert("pump-hot", "pump-1", Some("temp"), state, AlertSeverity::Critical, 10);
        publish_alert(&h.js, &hot(AlertState::Firing)).await?;
        let slow = alert(
            "pump-slow",
            "pump-1",
            Some("rpm"),
            AlertState::Pending,
            AlertSeverity::Warning,
            11,
        );
        publish_alert(&h.js, &slow).await?;
        let item = |rule: &str, state: &str| {
            format!("document.querySelector('#alerts li.alert[data-rule=\"{rule}\"][data-state=\"{state}\"]')")
        };
        browser
            .wait_for(
                "the firing alert in the panel",
                &format!(
                    "return !!{} && !!{} && document.querySelector('#alerts-count').textContent === '1 firing · 1 pending' \
                     && !document.querySelector('#alerts-note').textContent.includes('No alerts stream')",
                    item("pump-hot", "firing"),
                    item("pump-slow", "pending")
                ),
            )
            .await?;
        let shown = browser
            .run(&format!("return {}.textContent", item("pump-hot", "firing")))
            .await?;
        assert!(
            shown
                .as_str()
                .is_some_and(|t| t.contains("pump-1 · temp") && t.contains("91.5")),
            "{shown}"
        );
        publish_alert(&h.js, &hot(AlertState::Resolved)).await?;
        browser
            .wait_for(
                "the resolved alert gone",
                &format!(
                    "return !{} && !!{}",
                    item("pump-hot", "firing"),
                    item("pump-slow", "pending")
                ),
            )
            .await?;
        // Firing again (a new alert, later), for the screenshot.
        let again = alert(
            "pump-hot",
            "pump-1",
            Some("temp"),
            AlertState::Firing,
            AlertSeverity::Critical,
            20,
        );
        publish_alert(&h.js, &again).await?;
    }

    // The historical view: buckets from the aggregate endpoint.
    browser
        .run("document.querySelector('#mode-history').click(); return true")
        .await?;
    browser
        .wait_for(
            "the history chart",
            &format!(
                "const c = {chart}; return document.body.dataset.mode === 'history' && !!c && Number(c.dataset.points) >= 1 \
                 && !!c.querySelector('path.line')"
            ),
        )
        .await?;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join("dashboard.png");
    browser.screenshot(&path).await?;
    eprintln!("dashboard screenshot: {}", path.display());
    // A week: in hourly buckets (a week of minutes is more than a chart
    // shows, and more than the API answers at once), loaded without error.
    browser
        .run("document.querySelector('button[data-range=\"7d\"]').click(); return true")
        .await?;
    browser
        .wait_for(
            "a week in hourly buckets",
            &format!(
                "const s = window.tributary.state, c = {chart}, w = s.historyWindow; \
                 return s.bucket === '1h' && document.querySelector('#bucket').value === '1h' \
                 && document.querySelector('#bucket option[value=\"1m\"]').disabled \
                 && !!w && w.to - w.from >= 7 * 86400e3 && !!c && Number(c.dataset.points) >= 1 \
                 && Number(c.dataset.span) >= 7 * 86400e3 \
                 && document.querySelector('#banner').hidden"
            ),
        )
        .await?;
    browser.close().await?;
    h.stop().await
}

#[test]
fn base64_decodes_what_it_should() {
    assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
    assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
    assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
    assert!(base64_decode("T!E=").is_err());
}
