//! What the engine functions answer with: summaries of functions, workers, trigger types and
//! bindings, built from the core's tables.

use iii_core::triggers::{Binding, Provider};
use iii_core::{Core, FunctionEntry, DEFAULT_NS};
use iii_protocol::codes;
use iii_protocol::ErrorBody;
use serde_json::{json, Value};

pub(super) fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// Higher is better; `None` = no match.
pub(super) fn relevance(id: &str, desc: &str, q: &str) -> Option<u32> {
    let (id, desc, q) = (id.to_lowercase(), desc.to_lowercase(), q.to_lowercase());
    if id == q {
        Some(100)
    } else if id.starts_with(&q) {
        Some(80)
    } else if id.split("::").any(|seg| seg.starts_with(&q)) {
        Some(60)
    } else if id.contains(&q) {
        Some(40)
    } else if desc.contains(&q) {
        Some(20)
    } else {
        None
    }
}

pub(super) fn function_summary(func: &FunctionEntry) -> Value {
    let mut v = json!({"function_id": func.id, "namespace": func.namespace, "worker_name": func.worker_name()});
    if let Some(d) = &func.description {
        v["description"] = json!(d);
    }
    if let Some(m) = &func.metadata {
        v["metadata"] = m.clone();
    }
    v
}

pub(super) fn function_detail(e: &Core, id: &str, ns: Option<&str>) -> Result<Value, ErrorBody> {
    let func = match ns {
        Some(ns) => e.lookup(ns, id),
        None => e.lookup(DEFAULT_NS, id).or_else(|| {
            let found: Vec<_> = e
                .all_functions()
                .into_iter()
                .filter(|f| f.id == id)
                .collect();
            (found.len() == 1).then(|| found[0].clone())
        }),
    }
    .ok_or_else(|| ErrorBody::new(codes::NOT_FOUND, format!("Function {id} not found")))?;
    let mut v = function_summary(&func);
    if let Some(s) = &func.request_format {
        v["request_schema"] = s.clone();
    }
    if let Some(s) = &func.response_format {
        v["response_schema"] = s.clone();
    }
    let triggers: Vec<Value> = e
        .triggers()
        .bindings()
        .iter()
        .filter(|b| b.function_id == func.id && b.namespace == func.namespace)
        .map(|b| json!({"id": b.id, "trigger_type": b.trigger_type, "config": b.config}))
        .collect();
    v["registered_triggers"] = json!(triggers);
    Ok(v)
}

pub(super) fn trigger_type_info(e: &Core, id: &str, ns: Option<&str>) -> Option<Value> {
    let reg = e.triggers();
    let types = reg.types();
    let t = types
        .iter()
        .find(|t| t.id == id && t.namespace == ns.unwrap_or(DEFAULT_NS))
        .or_else(|| types.iter().find(|t| t.id == id && ns.is_none()))?;
    let mut v = json!({
        "id": t.id, "namespace": t.namespace, "worker_name": t.worker_name(), "description": t.description,
        "instance_count": reg.instance_count(&(t.namespace.clone(), t.id.clone())),
    });
    if let Some(s) = t.trigger_request_format.clone() {
        v["configuration_schema"] = s;
    }
    if let Some(s) = t.call_request_format.clone() {
        v["request_schema"] = s;
    }
    if let Some(s) = t.response_format.clone() {
        v["response_schema"] = s;
    }
    if matches!(t.provider, Provider::Builtin(_)) {
        v["internal"] = json!(true);
    }
    Some(v)
}

pub(super) fn binding_worker_name(e: &Core, b: &Binding) -> String {
    b.owner
        .and_then(|o| e.conn(o))
        .and_then(|c| c.name())
        .unwrap_or_else(|| b.function_id.split("::").next().unwrap_or("").to_string())
}

pub(super) fn binding_summary(b: &Binding, worker: &str) -> Value {
    let cfg = b.config.to_string();
    let summary = if cfg.chars().count() > 80 {
        format!("{}…", cfg.chars().take(80).collect::<String>())
    } else {
        cfg
    };
    json!({"id": b.id, "trigger_type": b.trigger_type, "function_id": b.function_id, "worker_name": worker, "config": b.config, "config_summary": summary})
}

pub(super) fn worker_summaries(e: &Core) -> Vec<Value> {
    let mut out = Vec::new();
    let funcs = e.all_functions();
    for name in e.in_process_workers() {
        let name = &name;
        let count = funcs
            .iter()
            .filter(|f| f.engine_worker == Some(*name))
            .count();
        out.push(json!({
            "name": name, "description": null, "version": env!("CARGO_PKG_VERSION"), "id": name, "namespace": DEFAULT_NS,
            "runtime": "engine", "os": std::env::consts::OS, "status": "available", "function_count": count,
            "connected_at_ms": e.started_ms(), "active_invocations": 0, "isolation": "in-process", "ip_address": null,
        }));
    }
    for c in e.conns() {
        let (meta, ns) = {
            let st = c.state.lock();
            (
                st.meta.clone(),
                st.namespace.clone().unwrap_or_else(|| DEFAULT_NS.into()),
            )
        };
        // Upstream hides connections that never declared a pid (e.g. CLI one-shots).
        let Some(pid) = meta.pid else { continue };
        let count = funcs
            .iter()
            .filter(|f| f.owner_conn().is_some_and(|o| o.id == c.id))
            .count();
        out.push(json!({
            "name": meta.name.clone().unwrap_or_else(|| c.id_str.clone()), "description": meta.description, "version": meta.version,
            "id": c.id_str, "namespace": ns, "runtime": meta.runtime, "os": meta.os,
            "status": if c.is_closing() { "disconnecting" } else { "connected" }, "function_count": count,
            "connected_at_ms": c.connected_at_ms, "active_invocations": e.active_invocations(c.id),
            "isolation": meta.isolation, "ip_address": c.ip, "pid": pid,
        }));
    }
    out
}
