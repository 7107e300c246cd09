//! Logs and traces.
//!
//! Logs go to stderr as text or JSON, at `RUST_LOG`. With
//! `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are also exported as OTLP over
//! HTTP (protobuf; no gRPC stack), batched on a thread of their own, at
//! info and above whatever `RUST_LOG` says of logs. A
//! request carrying a W3C `traceparent` header continues that trace: its
//! span is the child of the caller's, and events it publishes carry the
//! request span's own `traceparent` in their metadata.

use std::collections::HashMap;

use axum::http::HeaderMap;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{LogFormat, ServerConfig};

/// The metadata key (and header) carrying W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// What [`init`] installed; [`Telemetry::shutdown`] sends the spans still
/// batched.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still waiting (a no-op without OTLP). Call it
    /// outside the async runtime, after the server stopped.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("smalltalk: the last spans were not exported: {error}");
            }
        }
    }
}

/// Installs the log subscriber, and with an OTLP endpoint the span
/// exporter. Call it outside the async runtime (the exporter's HTTP client
/// is a blocking one on the exporter's own thread).
pub fn init(config: &ServerConfig) -> Result<Telemetry, opentelemetry_otlp::ExporterBuildError> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (provider, spans) = match config.otlp_traces_url() {
        Some(url) => {
            use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_headers(HashMap::new())
                .build()?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(config.otel_service_name.clone())
                        .build(),
                )
                .build();
            let tracer = provider.tracer("smalltalk");
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            // Handlers of events that carry a publisher's trace context run
            // in that trace.
            smalltalk::events::on_handler_span(join_publishers_trace);
            // Spans at info and above whatever `RUST_LOG` says of logs:
            // quiet logs must not cut the traces.
            (
                Some(provider),
                Some(
                    tracing_opentelemetry::layer()
                        .with_tracer(tracer)
                        .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
                ),
            )
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(spans)
        .try_init();
    Ok(Telemetry { provider })
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|name| name.as_str()).collect()
    }
}

/// Makes a bus handler's span the child of the span that published its
/// event (its metadata's `traceparent`).
fn join_publishers_trace(span: &tracing::Span, event: &smalltalk::types::Event) {
    let Some(traceparent) = event
        .metadata
        .get(TRACEPARENT)
        .and_then(serde_json::Value::as_str)
    else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let parent = TraceContextPropagator::new().extract(&carrier);
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Makes `span` the child of the trace a request's `traceparent` names
/// (nothing happens without a valid one, or without OTLP).
pub(crate) fn continue_trace(span: &tracing::Span, headers: &HeaderMap) {
    if headers.contains_key(TRACEPARENT) {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
    }
}

/// The `traceparent` of the current span when spans are exported, else
/// the request's own (if well formed), else none.
pub(crate) fn current_traceparent(headers: &HeaderMap) -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let own = span.span_context();
    if own.is_valid() {
        return Some(format!(
            "00-{}-{}-{:02x}",
            own.trace_id(),
            own.span_id(),
            own.trace_flags().to_u8()
        ));
    }
    let given = headers.get(TRACEPARENT)?.to_str().ok()?.trim();
    well_formed(given).then(|| given.to_owned())
}

/// A W3C `traceparent` of version 00: `00-<32 hex>-<16 hex>-<2 hex>`, ids
/// not all zero, lowercase.
fn well_formed(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    matches!(parts.as_slice(), [version, trace, span, flags]
        if *version == "00"
            && hex(trace, 32) && trace.bytes().any(|b| b != b'0')
            && hex(span, 16) && span.bytes().any(|b| b != b'0')
            && hex(flags, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_travel() {
        assert!(well_formed(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert!(!well_formed(bad), "{bad:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            current_traceparent(&headers).as_deref(),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        headers.insert(TRACEPARENT, "garbage".parse().unwrap());
        assert_eq!(current_traceparent(&headers), None);
    }
}
