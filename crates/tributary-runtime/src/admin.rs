//! The admin HTTP routes every service mounts: `/healthz` (the process
//! answers), `/readyz` (its dependencies are usable) and `/metrics`
//! (Prometheus text format).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

type Probe = Arc<dyn Fn() -> bool + Send + Sync>;

/// Named readiness probes. `/readyz` is 200 only when every probe passes;
/// its body lists each probe's state.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Arc<Mutex<Vec<(&'static str, Probe)>>>,
}

impl Readiness {
    /// Adds a probe; it must be cheap (it runs on every `/readyz`).
    pub fn add(&self, name: &'static str, probe: impl Fn() -> bool + Send + Sync + 'static) {
        self.probes
            .lock()
            .expect("readiness lock")
            .push((name, Arc::new(probe)));
    }

    /// Adds a probe that reads a flag, and returns the flag for the owner to set.
    pub fn flag(&self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        let probe = flag.clone();
        self.add(name, move || probe.load(Ordering::Relaxed));
        flag
    }

    /// Every probe's state, and whether all pass.
    pub fn check(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let probes = self.probes.lock().expect("readiness lock").clone();
        let mut all = true;
        let mut states = serde_json::Map::new();
        for (name, probe) in probes {
            let ok = probe();
            all &= ok;
            states.insert(name.to_owned(), serde_json::Value::Bool(ok));
        }
        (all, states)
    }
}

/// `/healthz` (200 while `healthy`, 503 once a task the service depends on
/// is gone), `/readyz`, `/metrics`.
pub fn admin_router(readiness: Readiness, healthy: Arc<AtomicBool>) -> Router {
    crate::telemetry::prometheus();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Admin { readiness, healthy })
}

#[derive(Clone)]
struct Admin {
    readiness: Readiness,
    healthy: Arc<AtomicBool>,
}

async fn healthz(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, Json(serde_json::json!({ "status": "ok" })))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({ "status": "failed", "reason": "a task the service depends on is gone; it is stopping" }),
            ),
        )
    }
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    let (ready, checks) = admin.readiness.check();
    let ready = ready && admin.healthy.load(Ordering::Relaxed);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({ "status": if ready { "ready" } else { "not_ready" }, "checks": checks });
    (status, Json(body))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::telemetry::prometheus().render(),
    )
}
