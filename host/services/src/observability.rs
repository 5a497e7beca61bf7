//! Engine logging and health (config entry `iii-observability`, always on): `engine::log::*`
//! writes a worker's log record into the engine log, `engine::baggage::*` are diagnostics, and
//! `engine::health::check` reports the core's counters. The entry's `config.level` sets the
//! engine log level, which the CLI reads before start ([`ObservabilityConfig`]).

use iii_core::config::ConfigError;
use iii_core::{
    Configured, Core, Entry, FunctionSpec, NoInput, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

const WORKER: &str = "iii-observability";
const LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// The observability service.
pub struct Observability;

/// What the `iii-observability` entry configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservabilityConfig {
    /// The engine log level, if the entry sets one.
    pub level: Option<String>,
}

impl Service for Observability {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: WORKER,
            worker: WORKER,
            deprecated_names: &[],
            repeatable: false,
            always_on: true,
        }
    }

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        // Upstream's exporter, sampling and metrics keys are accepted and not read.
        Some(block(
            "iii-observability",
            vec![(
                "level",
                field(RESTART, "engine log level (info)", json!({"enum": LEVELS})),
            )],
            true,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut cfg = ObservabilityConfig::default();
        for e in entries {
            // Upstream's exporter, sampling and metrics keys are accepted; only `level` is read.
            let Some(m) = e.reader.mapping(e.config, &e.key("config"))? else {
                continue;
            };
            if let Some(l) = m.get("level") {
                let key = e.key("config.level");
                let l = e.reader.string(l, &key)?;
                if !LEVELS.contains(&l.as_str()) {
                    return Err(e.reader.invalid(
                        &key,
                        "one of trace, debug, info, warn, error",
                        &serde_yaml::Value::String(l),
                    ));
                }
                cfg.level = Some(l);
            }
        }
        Ok(Box::new(cfg))
    }
}

#[async_trait::async_trait]
impl Configured for ObservabilityConfig {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        Ok(self)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[derive(Deserialize, JsonSchema)]
struct LogIn {
    message: String,
    data: Option<Value>,
    service_name: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
#[allow(
    dead_code,
    reason = "the key is validated; baggage is not stored in the engine"
)]
struct BaggageGetIn {
    key: String,
}

#[derive(Deserialize, JsonSchema)]
#[allow(
    dead_code,
    reason = "the fields are validated; baggage is not stored in the engine"
)]
struct BaggageSetIn {
    key: String,
    value: String,
}

impl Prepared for ObservabilityConfig {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        for level in LEVELS {
            let id = format!("engine::log::{level}");
            reg.function(
                FunctionSpec::typed(id, "Write a log record", move |_e: Core, _ctx, i: LogIn| async move {
                    let svc = i.service_name.unwrap_or_default();
                    let data = i.data.map(|d| d.to_string()).unwrap_or_default();
                    match level {
                        "error" => tracing::error!(target: "worker", service = %svc, data = %data, "{}", i.message),
                        "warn" => tracing::warn!(target: "worker", service = %svc, data = %data, "{}", i.message),
                        "debug" => tracing::debug!(target: "worker", service = %svc, data = %data, "{}", i.message),
                        "trace" => tracing::trace!(target: "worker", service = %svc, data = %data, "{}", i.message),
                        _ => tracing::info!(target: "worker", service = %svc, data = %data, "{}", i.message),
                    }
                    Ok(Value::Null)
                })
                .returns(json!({"type": "null"})),
            );
        }
        reg.function(
            FunctionSpec::typed(
                "engine::baggage::get",
                "Read a baggage entry (diagnostic)",
                |_e: Core, _ctx, _i: BaggageGetIn| async move { Ok(json!({ "value": null })) },
            )
            .returns(json!({"type": "object", "properties": {"value": {}}})),
        );
        reg.function(
            FunctionSpec::typed(
                "engine::baggage::set",
                "Set a baggage entry (not propagated)",
                |_e: Core, _ctx, _i: BaggageSetIn| async move {
                    Ok(json!({ "success": true, "note": "baggage set through this function is not propagated; send it with the call instead" }))
                },
            )
            .returns(json!({"type": "object", "properties": {"success": {"type": "boolean"}, "note": {"type": "string"}}})),
        );
        reg.function(
            FunctionSpec::typed(
                "engine::baggage::get_all",
                "All baggage entries (diagnostic)",
                |_e: Core, _ctx, _i: NoInput| async move { Ok(json!({ "baggage": {} })) },
            )
            .returns(json!({"type": "object", "properties": {"baggage": {"type": "object"}}})),
        );
        reg.function(
            FunctionSpec::typed(
                "engine::health::check",
                "Engine health",
                |e: Core, _ctx, _i: NoInput| async move {
                    Ok(json!({
                        "status": "healthy",
                        "workers": e.conns().len(),
                        "functions": e.all_functions().len(),
                        "pending_invocations": e.pending_len(),
                        "uptime_ms": iii_core::conn::now_ms().saturating_sub(e.started_ms()),
                        "version": env!("CARGO_PKG_VERSION"),
                    }))
                },
            )
            .returns(json!({"type": "object", "properties": {
                "status": {"type": "string"}, "workers": {"type": "integer"},
                "functions": {"type": "integer"}, "pending_invocations": {"type": "integer"},
                "uptime_ms": {"type": "integer"}, "version": {"type": "string"}}})),
        );
    }
}
