//! The node's Prometheus metrics.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets in seconds: sub-millisecond ranking up to slow fallbacks.
const SECONDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Debug, Clone)]
pub struct NodeMetrics {
    registry: Registry,
    pub requests: HistogramVec,
    pub rank_seconds: HistogramVec,
    pub recommendations: IntCounterVec,
    pub fallbacks: IntCounterVec,
    pub errors: IntCounterVec,
    pub swaps: IntCounterVec,
    pub rollout_failures: IntCounterVec,
    pub plan_revision: IntGaugeVec,
    /// Variants of each surface's plan whose version is revoked (serving nothing).
    pub revoked_variants: IntGaugeVec,
    /// Seconds since each surface's plan was last confirmed with the registry (set when metrics are read).
    pub plan_age_seconds: GaugeVec,
    pub feature_reads: IntCounterVec,
    pub events: IntCounterVec,
    /// Write-ahead log records not yet applied to the feature store (set when metrics are read).
    pub ingest_backlog: prometheus::IntGauge,
    pub ingest_apply_failures: prometheus::IntGauge,
    pub ingest_wal_bytes: prometheus::IntGauge,
    pub node_id_conflict: prometheus::IntGauge,
    /// Requests refused before they were read, by kind (unauthenticated, forbidden, rate_limited).
    pub refusals: IntCounterVec,
    /// Times a surface's catalogue was read from the store.
    pub catalogue_builds: prometheus::IntCounter,
    /// Clients with a live rate-limit entry (set when metrics are read).
    pub rate_limited_clients: prometheus::IntGauge,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let metric = $metric.expect("metric definitions are valid");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("metric names are unique");
                metric
            }};
        }
        let histogram = |name: &str, help: &str| {
            HistogramOpts::new(format!("edgerec_node_{name}"), help).buckets(SECONDS.to_vec())
        };
        let counter = |name: &str, help: &str| Opts::new(format!("edgerec_node_{name}"), help);
        Self {
            requests: register!(HistogramVec::new(
                histogram(
                    "request_seconds",
                    "HTTP request latency by route and status."
                ),
                &["route", "status"]
            )),
            rank_seconds: register!(HistogramVec::new(
                histogram(
                    "rank_seconds",
                    "Time in the Wasm ranker per ranking, by surface."
                ),
                &["surface"]
            )),
            recommendations: register!(IntCounterVec::new(
                counter(
                    "recommendations_total",
                    "Answered recommendation requests by surface, variant and model version."
                ),
                &["surface", "variant", "model_version"]
            )),
            fallbacks: register!(IntCounterVec::new(
                counter(
                    "fallbacks_total",
                    "Answers that did not come from the model's full path, by reason."
                ),
                &["reason"]
            )),
            errors: register!(IntCounterVec::new(
                counter("errors_total", "Errors by kind."),
                &["kind"]
            )),
            swaps: register!(IntCounterVec::new(
                counter(
                    "model_swaps_total",
                    "Deployments put into service, by surface."
                ),
                &["surface"]
            )),
            rollout_failures: register!(IntCounterVec::new(
                counter(
                    "rollout_failures_total",
                    "Plans not put into service (the previous one kept serving), by surface and reason."
                ),
                &["surface", "reason"]
            )),
            plan_revision: register!(IntGaugeVec::new(
                counter("plan_revision", "The plan revision each surface serves."),
                &["surface"]
            )),
            revoked_variants: register!(IntGaugeVec::new(
                counter(
                    "revoked_variants",
                    "Variants of each surface's plan whose version is revoked: their users are served by the \
                     other variants, or by popularity when none is left."
                ),
                &["surface"]
            )),
            plan_age_seconds: register!(GaugeVec::new(
                counter(
                    "plan_age_seconds",
                    "Seconds since the registry last confirmed each surface's plan (a verified answer or a 304)."
                ),
                &["surface"]
            )),
            feature_reads: register!(IntCounterVec::new(
                counter(
                    "feature_reads_total",
                    "User feature lookups by outcome (cache_hit, store, unavailable)."
                ),
                &["outcome"]
            )),
            events: register!(IntCounterVec::new(
                counter(
                    "events_total",
                    "Events received by outcome (accepted, duplicate, refused)."
                ),
                &["outcome"]
            )),
            ingest_backlog: register!(prometheus::IntGauge::with_opts(counter(
                "ingest_backlog_records",
                "Acknowledged records the feature store has not applied yet."
            ))),
            ingest_apply_failures: register!(prometheus::IntGauge::with_opts(counter(
                "ingest_apply_failures",
                "Failed attempts to apply acknowledged records to the feature store (retried)."
            ))),
            ingest_wal_bytes: register!(prometheus::IntGauge::with_opts(counter(
                "ingest_wal_bytes",
                "Bytes of write-ahead log on the node's disk, not yet shipped (bounded by max_backlog_bytes)."
            ))),
            node_id_conflict: register!(prometheus::IntGauge::with_opts(counter(
                "node_id_conflict",
                "1 while another live node holds this node's id in the feature store."
            ))),
            refusals: register!(IntCounterVec::new(
                counter(
                    "refusals_total",
                    "Requests refused for their credential or rate, by kind and limit."
                ),
                &["kind", "limit"]
            )),
            catalogue_builds: register!(prometheus::IntCounter::with_opts(counter(
                "catalogue_builds_total",
                "Catalogue reads from the feature store (at most one per surface per refresh interval)."
            ))),
            rate_limited_clients: register!(prometheus::IntGauge::with_opts(counter(
                "rate_limit_clients",
                "Clients (addresses, visitors, API keys) with a live rate-limit entry."
            ))),
            registry,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("the text encoder writes to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}
