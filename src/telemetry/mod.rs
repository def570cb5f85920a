//! Logs, traces and metrics. `RUST_LOG` picks the verbosity (default `info`), `[telemetry]
//! log_format` picks text or JSON, and with `OTEL_EXPORTER_OTLP_ENDPOINT` (`[telemetry]
//! otlp_endpoint`) set every span — one per pipeline step, carrying the incident id — is also
//! exported over OTLP/HTTP (protobuf) to `<endpoint>/v1/traces`, which Jaeger and any
//! OpenTelemetry collector read. Logs go to standard error so standard output stays for
//! command output. [`metrics`] holds the Prometheus metrics.

pub mod metrics;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, TelemetrySettings};

/// Keeps the trace exporter alive; dropping it flushes the spans not yet sent. Hold it until
/// the process is done.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("sentinel: flushing traces failed: {e}");
            }
        }
    }
}

/// The OTLP/HTTP traces URL for an `OTEL_EXPORTER_OTLP_ENDPOINT` base, as the OpenTelemetry
/// specification builds it.
pub fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .build()
        .map_err(|e| e.to_string())?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("sentinel")
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Installs the global subscriber. Call it before starting the async runtime (the OTLP
/// exporter runs on its own thread). A second call only returns an inert guard (tests call
/// it more than once).
pub fn init(settings: &TelemetrySettings) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            // Colours only for a person at a terminal, not in a log file or a collector.
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let endpoint = settings.otlp_endpoint.trim();
    let provider = if endpoint.is_empty() {
        None
    } else {
        match tracer_provider(endpoint) {
            Ok(provider) => Some(provider),
            Err(e) => {
                eprintln!("sentinel: traces are not exported: OTLP endpoint {endpoint}: {e}");
                None
            }
        }
    };
    let otel = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("sentinel")));
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .with(otel)
        .try_init()
        .is_ok();
    if installed {
        if let Some(endpoint) = provider.as_ref().map(|_| endpoint) {
            tracing::info!(endpoint = %traces_url(endpoint), "exporting traces over OTLP/HTTP");
        }
        Telemetry { provider }
    } else {
        Telemetry { provider: None }
    }
}
