//! `/metrics`: the engine's metrics and the HTTP ones (requests by route,
//! method and status, their durations, bytes served) in one Prometheus
//! registry, served as OpenMetrics text.
//!
//! Routes are a fixed set of names, never raw paths, so a scan of random
//! URLs cannot blow up the number of series. Nothing here queries the
//! database: the store gauges are the engine's, read once at start.

use std::time::Duration;

use http::Method;
use ncps_core::metrics::{Metrics, latency_histogram};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What a request was for: the `route` label, given by
/// [`crate::routing::Route::label`].
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Label {
    /// `/<hash>.narinfo`
    Narinfo,
    /// `/nar/...`
    Nar,
    /// `/nix-cache-info`
    NixCacheInfo,
    /// `/pubkey`
    Pubkey,
    /// `/healthz`
    Healthz,
    /// `/readyz`
    Readyz,
    /// `/metrics`
    Metrics,
    /// Anything else, `/` included.
    Other,
}

impl Label {
    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Label::Narinfo => "narinfo",
            Label::Nar => "nar",
            Label::NixCacheInfo => "nix-cache-info",
            Label::Pubkey => "pubkey",
            Label::Healthz => "healthz",
            Label::Readyz => "readyz",
            Label::Metrics => "metrics",
            Label::Other => "other",
        }
    }

    /// Whether requests to it are probes and scrapes (logged at debug level).
    pub fn is_probe(self) -> bool {
        matches!(self, Label::Healthz | Label::Readyz | Label::Metrics)
    }
}

impl EncodeLabelValue for Label {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The `method` label: the usual methods by name, anything else `OTHER`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Label,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: Label,
}

/// The registry `/metrics` serves: the engine's families and the HTTP ones.
#[derive(Debug)]
pub struct ServerMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RouteLabels, Histogram, fn() -> Histogram>,
    served_bytes: Family<RouteLabels, Counter>,
}

impl ServerMetrics {
    /// A registry with `engine`'s families and the HTTP ones.
    pub fn new(engine: &Metrics) -> Self {
        let mut registry = Registry::default();
        engine.register(&mut registry);
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let served_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "ncps_http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        registry.register(
            "ncps_http_request_duration_seconds",
            "Time from a request's arrival to the end of its response body, by route",
            durations.clone(),
        );
        registry.register(
            "ncps_http_served_bytes",
            "Response body bytes sent to clients, by route",
            served_bytes.clone(),
        );
        ServerMetrics {
            registry,
            requests,
            durations,
            served_bytes,
        }
    }

    /// Records one answered request.
    pub fn observe(&self, route: Label, method: &Method, status: u16, bytes: u64, took: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        let labels = RouteLabels { route };
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        self.served_bytes.get_or_create(&labels).inc_by(bytes);
    }

    /// Everything, as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_requests_by_route_and_status() {
        let metrics = ServerMetrics::new(&Metrics::new());
        metrics.observe(
            Label::Nar,
            &Method::GET,
            200,
            1234,
            Duration::from_millis(5),
        );
        let text = metrics.render();
        assert!(
            text.contains(
                "ncps_http_requests_total{route=\"nar\",method=\"GET\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ncps_http_served_bytes_total{route=\"nar\"} 1234"),
            "{text}"
        );
        assert!(
            text.contains("ncps_cache_hits_total{kind=\"nar\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
