//! Logs and traces: the tracing subscriber the binary installs.
//!
//! `--log-format text` writes one readable line per event to stderr, with
//! colours only when stderr is a terminal (and `NO_COLOR` is unset), so log
//! files and journald get plain text; `--log-format json` writes one JSON
//! object per line, the event's fields at the top level next to `timestamp`,
//! `level`, `target` and `message`, and the current span's fields (such as
//! the `request_id` of the request being served) under `span`. With
//! `--otel-enabled`, spans are also exported over OTLP/gRPC when the binary
//! was built with the `otel` cargo feature.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::options::{GlobalOptions, LogFormat};

/// The error `--otel-enabled` gives in a build without the `otel` feature.
pub const OTEL_NOT_BUILT: &str =
    "--otel-enabled: built without OpenTelemetry (feature otel); rebuild with `--features otel`";

/// The `--log-level` filter: a level or a tracing filter directive such as
/// `info,ncps_core=debug`.
pub fn filter(level: &str) -> Result<EnvFilter, String> {
    EnvFilter::try_new(level).map_err(|e| {
        format!(
            "--log-level: {level:?} is not a level (error, warn, info, debug, trace) or a filter like info,ncps_core=debug: {e}"
        )
    })
}

/// Whether text logs should carry ANSI colours: only on a terminal, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
pub fn use_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Checks the logging options without installing anything.
pub fn check(global: &GlobalOptions) -> Result<(), String> {
    filter(&global.log_level)?;
    if global.otel_enabled {
        otel::check(global.otel_grpc_url.as_deref())?;
    }
    Ok(())
}

/// Flushes exported traces when dropped; keep it until the program ends.
#[must_use = "dropping the guard stops trace export"]
pub struct Guard {
    #[cfg(feature = "otel")]
    otel: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(provider) = self.otel.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("ncps-server: flushing OpenTelemetry traces: {e}");
        }
    }
}

/// Installs the global subscriber. With `--otel-enabled` it must run inside
/// a Tokio runtime (the OTLP client needs one).
pub fn init(global: &GlobalOptions) -> Result<Guard, String> {
    let filter = filter(&global.log_level)?;
    let fmt = match global.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(use_colour())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    if global.otel_enabled {
        let (layer, guard) = otel::layer(global.otel_grpc_url.as_deref())?;
        registry
            .with(layer)
            .try_init()
            .map_err(|e| format!("installing the logger: {e}"))?;
        return Ok(guard);
    }
    registry
        .try_init()
        .map_err(|e| format!("installing the logger: {e}"))?;
    Ok(Guard {
        #[cfg(feature = "otel")]
        otel: None,
    })
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use super::Guard;

    /// Checks `--otel-grpc-url`: an http(s) URL.
    pub fn check(url: Option<&str>) -> Result<(), String> {
        if let Some(url) = url {
            match url::Url::parse(url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                Ok(_) => {
                    return Err(format!(
                        "--otel-grpc-url: {url}: must be an http:// or https:// URL"
                    ));
                }
                Err(e) => return Err(format!("--otel-grpc-url: {url}: {e}")),
            }
        }
        Ok(())
    }

    /// The layer exporting spans to `url` (or the OTLP default endpoint),
    /// and the guard flushing them at exit.
    pub fn layer<S>(url: Option<&str>) -> Result<(impl Layer<S>, Guard), String>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        check(url)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(url) = url {
            exporter = exporter.with_endpoint(url);
        }
        let exporter = exporter
            .build()
            .map_err(|e| format!("--otel-grpc-url: cannot set up the OTLP exporter: {e}"))?;
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name("ncps-server")
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("ncps-server");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        Ok((
            layer,
            Guard {
                otel: Some(provider),
            },
        ))
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::Identity;

    use super::{Guard, OTEL_NOT_BUILT};

    /// Always an error: this build cannot export traces.
    pub fn check(_url: Option<&str>) -> Result<(), String> {
        Err(OTEL_NOT_BUILT.to_owned())
    }

    /// Always an error: this build cannot export traces.
    pub fn layer<S: tracing::Subscriber>(
        _url: Option<&str>,
    ) -> Result<(impl Layer<S>, Guard), String> {
        Err::<(Identity, Guard), _>(OTEL_NOT_BUILT.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_levels_name_the_option() {
        assert!(filter("info,ncps_core=debug").is_ok());
        let e = filter("info,=[").unwrap_err();
        assert!(e.starts_with("--log-level: "), "{e}");
    }
}
