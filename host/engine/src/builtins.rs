//! Built-in engine functions (spec §5.1, §5.2) and engine-provided trigger types.

use std::sync::Arc;

use iii_protocol::ErrorBody;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{BuiltinFn, CallCtx, Engine, FunctionEntry, Handler, DEFAULT_NS};
use crate::triggers::{Binding, BuiltinTriggerType, Provider};

const EF: &str = "iii-engine-functions";
const OBS: &str = "iii-observability";

/// Deserializes a builtin's input (`null` = `{}`); failures are `deserialization_error` (spec §3.9).
pub(crate) fn input<T: DeserializeOwned>(ctx: &CallCtx, v: Value) -> Result<T, ErrorBody> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v).map_err(|e| {
        ErrorBody::new(
            "deserialization_error",
            format!("Failed to deserialize input for {}: {e}", ctx.function_id),
        )
    })
}

fn f<F, Fut>(func: F) -> BuiltinFn
where
    F: Fn(Engine, CallCtx, Value) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
{
    Arc::new(move |e, c, v| Box::pin(func(e, c, v)))
}

/// Engine types that fire from engine events; they need no arming.
struct EventTriggerType;

impl BuiltinTriggerType for EventTriggerType {
    fn register(&self, _b: &Binding) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _b: &Binding) {}
}

pub fn install(engine: &Engine) {
    {
        let mut t = engine.inner.triggers.lock();
        let ev: Arc<dyn BuiltinTriggerType> = Arc::new(EventTriggerType);
        t.register_builtin_type(
            "engine::functions-available",
            "Fires when the set of registered functions changes",
            ev.clone(),
        );
        t.register_builtin_type(
            "engine::workers-available",
            "Fires when a worker connects, disconnects or registers",
            ev,
        );
        if engine.config().http.is_some() {
            t.register_builtin_type(
                "http",
                "HTTP routes on the REST trigger server",
                engine.http_routes().clone(),
            );
        }
    }

    engine.register_builtin(
        EF,
        "engine::workers::register",
        "Declare this worker's name, runtime and namespace",
        None,
        f(|e, ctx, v| async move {
            match &ctx.caller {
                Some(c) => e.register_worker(c, &v).await,
                None => Err(ErrorBody::new(
                    "INVALID_ARGUMENTS",
                    "engine::workers::register must be called by a connected worker",
                )),
            }
        }),
    );
    engine.register_builtin(
        EF,
        "engine::workers::list",
        "List connected and in-process workers",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                search: Option<String>,
                runtime: Option<String>,
                status: Option<String>,
            }
            let i: In = input(&ctx, v)?;
            let workers: Vec<Value> = worker_summaries(&e)
                .into_iter()
                .filter(|w| i.runtime.as_deref().is_none_or(|r| w["runtime"] == r))
                .filter(|w| i.status.as_deref().is_none_or(|s| w["status"] == s))
                .filter(|w| {
                    i.search
                        .as_deref()
                        .is_none_or(|s| contains_ci(w["name"].as_str().unwrap_or(""), s))
                })
                .collect();
            Ok(json!({ "workers": workers }))
        }),
    );
    engine.register_builtin(EF, "engine::workers::info", "Details of one worker", None, f(|e, ctx, v| async move {
        #[derive(Deserialize)]
        struct In { name: String, namespace: Option<String> }
        let i: In = input(&ctx, v)?;
        let w = worker_summaries(&e)
            .into_iter()
            .find(|w| w["name"] == i.name.as_str() && i.namespace.as_deref().is_none_or(|n| w["namespace"] == n))
            .ok_or_else(|| ErrorBody::new("NOT_FOUND", format!("Worker {} not found", i.name)))?;
        let name = i.name.clone();
        let functions: Vec<Value> = e.all_functions().iter().filter(|f| f.worker_name() == name).map(|f| function_summary(f)).collect();
        let reg = e.inner.triggers.lock();
        let trigger_types: Vec<Value> = reg.types().iter().filter(|t| t.worker_name() == name).map(|t| json!({"id": t.id, "namespace": t.namespace, "description": t.description})).collect();
        let bindings: Vec<Value> = reg
            .bindings()
            .iter()
            .filter(|b| b.owner.and_then(|o| e.conn(o)).and_then(|c| c.name()).as_deref() == Some(name.as_str()))
            .map(|b| json!({"id": b.id, "trigger_type": b.trigger_type, "function_id": b.function_id, "config": b.config}))
            .collect();
        let mut worker = w.clone();
        worker["internal"] = json!(w["runtime"] == "engine");
        Ok(json!({"worker": worker, "functions": functions, "trigger_types": trigger_types, "registered_triggers": bindings}))
    }));
    engine.register_builtin(
        EF,
        "engine::functions::list",
        "List registered functions",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                search: Option<String>,
                prefix: Option<String>,
                worker: Option<String>,
                workers: Option<Vec<String>>,
                #[serde(default)]
                include_internal: bool,
            }
            let i: In = input(&ctx, v)?;
            let mut list: Vec<(u32, Value)> = Vec::new();
            for func in e.all_functions() {
                let hidden = (func.id.starts_with("engine::")
                    && !func.id.starts_with("engine::queue::"))
                    || func.is_internal();
                if hidden && !i.include_internal {
                    continue;
                }
                if i.prefix.as_deref().is_some_and(|p| !func.id.starts_with(p)) {
                    continue;
                }
                let wn = func.worker_name();
                if i.worker.as_deref().is_some_and(|w| w != wn) {
                    continue;
                }
                if i.workers.as_ref().is_some_and(|ws| !ws.contains(&wn)) {
                    continue;
                }
                let score = match &i.search {
                    None => 0,
                    Some(s) => {
                        match relevance(&func.id, func.description.as_deref().unwrap_or(""), s) {
                            Some(score) => score,
                            None => continue,
                        }
                    }
                };
                list.push((score, function_summary(&func)));
            }
            if i.search.is_some() {
                list.sort_by(|a, b| {
                    b.0.cmp(&a.0).then_with(|| {
                        a.1["function_id"]
                            .as_str()
                            .cmp(&b.1["function_id"].as_str())
                    })
                });
            }
            Ok(json!({ "functions": list.into_iter().map(|(_, v)| v).collect::<Vec<_>>() }))
        }),
    );
    engine.register_builtin(
        EF,
        "engine::functions::info",
        "Description and schemas of functions",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                function_id: Option<String>,
                function_ids: Option<Vec<String>>,
                namespace: Option<String>,
            }
            let i: In = input(&ctx, v)?;
            match (i.function_id, i.function_ids) {
                (Some(id), None) => function_detail(&e, &id, i.namespace.as_deref()),
                (None, Some(ids)) => {
                    if ids.len() > 32 {
                        return Err(ErrorBody::new(
                            "INVALID_ARGUMENTS",
                            "function_ids accepts at most 32 ids",
                        ));
                    }
                    let functions: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            function_detail(&e, id, i.namespace.as_deref()).unwrap_or_else(
                                |_| json!({"function_id": id, "error": "not_found"}),
                            )
                        })
                        .collect();
                    Ok(json!({ "functions": functions }))
                }
                _ => Err(ErrorBody::new(
                    "INVALID_ARGUMENTS",
                    "pass exactly one of `function_id` or `function_ids`",
                )),
            }
        }),
    );
    let list_types = || {
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                search: Option<String>,
                prefix: Option<String>,
                worker: Option<String>,
                #[serde(default)]
                include_internal: bool,
            }
            let i: In = input(&ctx, v)?;
            let types = e.inner.triggers.lock().types();
            let list: Vec<Value> = types
            .iter()
            .filter(|t| i.include_internal || !t.id.starts_with("engine::"))
            .filter(|t| i.prefix.as_deref().is_none_or(|p| t.id.starts_with(p)))
            .filter(|t| i.search.as_deref().is_none_or(|s| contains_ci(&t.id, s) || contains_ci(&t.description, s)))
            .filter(|t| i.worker.as_deref().is_none_or(|w| t.worker_name() == w))
            .map(|t| json!({"id": t.id, "namespace": t.namespace, "worker_name": t.worker_name(), "description": t.description}))
            .collect();
            Ok(json!({ "triggers": list }))
        })
    };
    engine.register_builtin(
        EF,
        "engine::triggers::list",
        "List trigger types",
        None,
        list_types(),
    );
    engine.register_builtin(
        EF,
        "engine::trigger-types::list",
        "List trigger types (alias of engine::triggers::list)",
        None,
        list_types(),
    );
    engine.register_builtin(
        EF,
        "engine::triggers::info",
        "Details and schemas of a trigger type",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                id: String,
                namespace: Option<String>,
            }
            let i: In = input(&ctx, v)?;
            trigger_type_info(&e, &i.id, i.namespace.as_deref()).ok_or_else(|| {
                ErrorBody::new("NOT_FOUND", format!("Trigger type {} not found", i.id))
            })
        }),
    );
    engine.register_builtin(
        EF,
        "engine::registered-triggers::list",
        "List trigger bindings",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                search: Option<String>,
                trigger_type: Option<String>,
                function_id: Option<String>,
                worker: Option<String>,
                #[serde(default)]
                include_internal: bool,
            }
            let i: In = input(&ctx, v)?;
            let bindings = e.inner.triggers.lock().bindings();
            let list: Vec<Value> = bindings
                .iter()
                .filter(|b| i.include_internal || !b.trigger_type.starts_with("engine::"))
                .filter(|b| {
                    i.trigger_type
                        .as_deref()
                        .is_none_or(|t| b.trigger_type == t)
                })
                .filter(|b| i.function_id.as_deref().is_none_or(|t| b.function_id == t))
                .filter(|b| {
                    i.search.as_deref().is_none_or(|s| {
                        contains_ci(&b.function_id, s)
                            || contains_ci(&b.trigger_type, s)
                            || contains_ci(&b.id, s)
                    })
                })
                .map(|b| (b, binding_worker_name(&e, b)))
                .filter(|(_, w)| i.worker.as_deref().is_none_or(|x| x == w))
                .map(|(b, w)| binding_summary(b, &w))
                .collect();
            Ok(json!({ "registered_triggers": list }))
        }),
    );
    engine.register_builtin(
        EF,
        "engine::registered-triggers::info",
        "Details of one trigger binding",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                id: String,
            }
            let i: In = input(&ctx, v)?;
            let b = e.inner.triggers.lock().binding(&i.id).ok_or_else(|| {
                ErrorBody::new("NOT_FOUND", format!("Trigger {} not found", i.id))
            })?;
            let w = binding_worker_name(&e, &b);
            let mut out = binding_summary(&b, &w);
            out["metadata"] = b.metadata.clone().unwrap_or(Value::Null);
            out["trigger"] = trigger_type_info(&e, &b.trigger_type, None).unwrap_or(Value::Null);
            out["function"] =
                function_detail(&e, &b.function_id, Some(&b.namespace)).unwrap_or(Value::Null);
            out.as_object_mut().map(|o| o.remove("config_summary"));
            Ok(out)
        }),
    );
    engine.register_builtin(
        EF,
        "engine::register_trigger",
        "Register a trigger binding not owned by any connection",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                trigger_type: String,
                function_id: String,
                config: Option<Value>,
                metadata: Option<Value>,
                trigger_namespace: Option<String>,
            }
            let i: In = input(&ctx, v)?;
            if i.trigger_namespace
                .as_deref()
                .is_some_and(|n| n.trim().is_empty())
            {
                return Err(ErrorBody::new(
                    "INVALID_NAMESPACE",
                    "namespace must not be blank",
                ));
            }
            let id = iii_protocol::format_uuid(crate::engine::new_id());
            let b = Binding {
                id: id.clone(),
                trigger_type: i.trigger_type,
                function_id: i.function_id,
                config: i.config.unwrap_or(Value::Null),
                metadata: i.metadata,
                owner: None,
                namespace: DEFAULT_NS.into(),
                trigger_namespace: i.trigger_namespace,
                home_namespace: DEFAULT_NS.into(),
                provider: None,
            };
            let mut sends = Vec::new();
            let ack = {
                let mut t = e.inner.triggers.lock();
                t.upsert(b, &mut sends)?;
                t.expect_ack(&id)
            };
            crate::triggers::deliver(sends).await;
            // A worker provider's rejection is returned synchronously; no answer in 10 s = accepted.
            if let Some(rx) = ack {
                match tokio::time::timeout(std::time::Duration::from_secs(10), rx).await {
                    Ok(Ok(Some(err))) => {
                        return Err(ErrorBody::new("trigger_registration_failed", err.message))
                    }
                    Ok(_) => {}
                    Err(_) => e.inner.triggers.lock().forget_ack(&id),
                }
            }
            Ok(json!({ "id": id }))
        }),
    );
    engine.register_builtin(
        EF,
        "engine::unregister_trigger",
        "Remove a trigger binding",
        None,
        f(|e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                id: String,
            }
            let i: In = input(&ctx, v)?;
            let existed = e.inner.triggers.lock().binding(&i.id).is_some();
            let sends = e.inner.triggers.lock().unregister(&i.id);
            crate::triggers::deliver(sends).await;
            Ok(json!({ "removed": existed }))
        }),
    );
    engine.register_builtin(EF, "engine::channels::create", "Create a data channel", None, f(|e, ctx, v| async move {
        #[derive(Deserialize)]
        struct In { buffer_size: Option<i64> }
        let i: In = input(&ctx, v)?;
        let n = i.buffer_size.unwrap_or(crate::channels::DEFAULT_BUFFER as i64).clamp(1, crate::channels::MAX_BUFFER as i64) as usize;
        let ch = e.channels().create(n);
        Ok(json!({ "writer": ch.reference(crate::channels::Direction::Write), "reader": ch.reference(crate::channels::Direction::Read) }))
    }));
    for level in ["info", "warn", "error", "debug", "trace"] {
        let id = format!("engine::log::{level}");
        engine.register_builtin(OBS, &id, "Write a log record", None, f(move |_e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In { message: String, data: Option<Value>, service_name: Option<String> }
            let i: In = input(&ctx, v)?;
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
        }));
    }
    engine.register_builtin(
        OBS,
        "engine::baggage::get",
        "Read a baggage entry (diagnostic)",
        None,
        f(|_e, ctx, v| async move {
            #[derive(Deserialize)]
            struct In {
                #[allow(dead_code)]
                key: String,
            }
            let _i: In = input(&ctx, v)?;
            Ok(json!({ "value": null }))
        }),
    );
    engine.register_builtin(OBS, "engine::baggage::set", "Set a baggage entry (not propagated)", None, f(|_e, ctx, v| async move {
        #[derive(Deserialize)]
        struct In { #[allow(dead_code)] key: String, #[allow(dead_code)] value: String }
        let _i: In = input(&ctx, v)?;
        Ok(json!({ "success": true, "note": "baggage set through this function is not propagated; send it with the call instead" }))
    }));
    engine.register_builtin(
        OBS,
        "engine::baggage::get_all",
        "All baggage entries (diagnostic)",
        None,
        f(|_e, _ctx, _v| async move { Ok(json!({ "baggage": {} })) }),
    );
    engine.register_builtin(
        OBS,
        "engine::health::check",
        "Engine health",
        None,
        f(|e, _ctx, _v| async move {
            Ok(json!({
                "status": "healthy",
                "workers": e.conns().len(),
                "functions": e.all_functions().len(),
                "pending_invocations": e.pending_len(),
                "uptime_ms": crate::conn::now_ms().saturating_sub(e.inner.started_ms),
                "version": env!("CARGO_PKG_VERSION"),
            }))
        }),
    );
}

fn contains_ci(hay: &str, needle: &str) -> bool {
    hay.to_lowercase().contains(&needle.to_lowercase())
}

/// Higher is better; `None` = no match.
fn relevance(id: &str, desc: &str, q: &str) -> Option<u32> {
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

fn function_summary(func: &FunctionEntry) -> Value {
    let mut v = json!({"function_id": func.id, "namespace": func.namespace, "worker_name": func.worker_name()});
    if let Some(d) = &func.description {
        v["description"] = json!(d);
    }
    if let Some(m) = &func.metadata {
        v["metadata"] = m.clone();
    }
    v
}

fn function_detail(e: &Engine, id: &str, ns: Option<&str>) -> Result<Value, ErrorBody> {
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
    .ok_or_else(|| ErrorBody::new("NOT_FOUND", format!("Function {id} not found")))?;
    let mut v = function_summary(&func);
    if let Some(s) = &func.request_format {
        v["request_schema"] = s.clone();
    }
    if let Some(s) = &func.response_format {
        v["response_schema"] = s.clone();
    }
    let triggers: Vec<Value> = e
        .inner
        .triggers
        .lock()
        .bindings()
        .iter()
        .filter(|b| b.function_id == func.id && b.namespace == func.namespace)
        .map(|b| json!({"id": b.id, "trigger_type": b.trigger_type, "config": b.config}))
        .collect();
    v["registered_triggers"] = json!(triggers);
    Ok(v)
}

fn trigger_type_info(e: &Engine, id: &str, ns: Option<&str>) -> Option<Value> {
    let reg = e.inner.triggers.lock();
    let types = reg.types();
    let t = types
        .iter()
        .find(|t| t.id == id && t.namespace == ns.unwrap_or(DEFAULT_NS))
        .or_else(|| types.iter().find(|t| t.id == id && ns.is_none()))?;
    let mut v = json!({
        "id": t.id, "namespace": t.namespace, "worker_name": t.worker_name(), "description": t.description,
        "instance_count": reg.instance_count(&(t.namespace.clone(), t.id.clone())),
    });
    let (cfg_schema, req_schema, resp_schema) = builtin_schemas(&t.id);
    if let Some(s) = t.trigger_request_format.clone().or(cfg_schema) {
        v["configuration_schema"] = s;
    }
    if let Some(s) = t.call_request_format.clone().or(req_schema) {
        v["request_schema"] = s;
    }
    if let Some(s) = resp_schema {
        v["response_schema"] = s;
    }
    if matches!(t.provider, Provider::Builtin(_)) {
        v["internal"] = json!(true);
    }
    Some(v)
}

fn builtin_schemas(id: &str) -> (Option<Value>, Option<Value>, Option<Value>) {
    match id {
        "http" => (
            Some(
                json!({"type": "object", "required": ["api_path"], "properties": {
                "api_path": {"type": "string"}, "http_method": {"type": "string", "enum": ["GET","POST","PUT","DELETE","PATCH","HEAD","OPTIONS"]},
                "condition_function_id": {"type": "string"}, "middleware_function_ids": {"type": "array", "items": {"type": "string"}}}}),
            ),
            Some(json!({"type": "object", "properties": {
                "query_params": {"type": "object"}, "path_params": {"type": "object"}, "headers": {"type": "object"},
                "path": {"type": "string"}, "method": {"type": "string"}, "body": {}}})),
            Some(
                json!({"type": "object", "properties": {"status_code": {"type": "integer"}, "headers": {}, "body": {}}}),
            ),
        ),
        "engine::workers-available" => (
            None,
            Some(
                json!({"type": "object", "properties": {"event": {"type": "string"}, "worker_id": {"type": "string"}}}),
            ),
            None,
        ),
        "engine::functions-available" => (
            None,
            Some(
                json!({"type": "object", "properties": {"event": {"type": "string"}, "functions": {"type": "array"}}}),
            ),
            None,
        ),
        _ => (None, None, None),
    }
}

fn binding_worker_name(e: &Engine, b: &Binding) -> String {
    b.owner
        .and_then(|o| e.conn(o))
        .and_then(|c| c.name())
        .unwrap_or_else(|| b.function_id.split("::").next().unwrap_or("").to_string())
}

fn binding_summary(b: &Binding, worker: &str) -> Value {
    let cfg = b.config.to_string();
    let summary = if cfg.chars().count() > 80 {
        format!("{}…", cfg.chars().take(80).collect::<String>())
    } else {
        cfg
    };
    json!({"id": b.id, "trigger_type": b.trigger_type, "function_id": b.function_id, "worker_name": worker, "config": b.config, "config_summary": summary})
}

fn worker_summaries(e: &Engine) -> Vec<Value> {
    let mut out = Vec::new();
    let funcs = e.all_functions();
    for name in e.in_process_workers() {
        let count = funcs
            .iter()
            .filter(|f| f.engine_worker == Some(name))
            .count();
        out.push(json!({
            "name": name, "description": null, "version": env!("CARGO_PKG_VERSION"), "id": name, "namespace": DEFAULT_NS,
            "runtime": "engine", "os": std::env::consts::OS, "status": "available", "function_count": count,
            "connected_at_ms": e.inner.started_ms, "active_invocations": 0, "isolation": "in-process", "ip_address": null,
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
            .filter(|f| matches!(&f.handler, Handler::Remote(o) if o.id == c.id))
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

/// Polls the function set every `every` and fires `engine::functions-available` on change.
pub async fn watch_functions(engine: Engine, every: std::time::Duration) {
    use std::hash::{Hash, Hasher};
    let mut last: Option<u64> = None;
    loop {
        tokio::time::sleep(every).await;
        let funcs = engine.all_functions();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for f in &funcs {
            (&f.namespace, &f.id).hash(&mut h);
        }
        let now = h.finish();
        if last.is_some_and(|l| l != now) {
            let list: Vec<Value> = funcs
                .iter()
                .filter(|f| !f.id.starts_with("engine::"))
                .map(|f| function_summary(f))
                .collect();
            let payload = json!({"event": "functions_changed", "functions": list}).to_string();
            engine.fire_builtin_trigger("engine::functions-available", &payload);
        }
        last = Some(now);
    }
}
