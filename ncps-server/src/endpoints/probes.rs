//! The probes and the scrape, which need no token: `/healthz` (the process
//! answers), `/readyz` (its backends answer) and `/metrics`.

use http::{Response, StatusCode};

use crate::response::{self, Body};
use crate::routing::Probe;
use crate::service::AppState;

/// Answers `probe`.
pub async fn answer(state: &AppState, probe: Probe, head: bool) -> Response<Body> {
    match probe {
        Probe::Healthz => response::plain(StatusCode::OK, "ok", head),
        Probe::Readyz => readiness(state, head).await,
        Probe::Metrics => metrics(state, head),
    }
}

/// `/metrics`: Prometheus metrics in OpenMetrics text; 404 when turned off.
fn metrics(state: &AppState, head: bool) -> Response<Body> {
    response::no_store(match &state.metrics {
        Some(metrics) => response::text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            metrics.render(),
            head,
        ),
        None => response::plain(
            StatusCode::NOT_FOUND,
            "metrics are turned off (--prometheus-enabled=false)",
            head,
        ),
    })
}

/// `/readyz`: 200 when the database, storage and lock backend all work,
/// else 503 naming each part that does not.
async fn readiness(state: &AppState, head: bool) -> Response<Body> {
    let mut failing = Vec::new();
    for (part, result) in state.cache.readiness().await {
        if let Err(e) = result {
            failing.push(format!("{part}: {e}"));
        }
    }
    response::no_store(if failing.is_empty() {
        response::plain(StatusCode::OK, "ready", head)
    } else {
        tracing::warn!(failing = ?failing, "not ready");
        response::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failing.join("; ")),
            head,
        )
    })
}
