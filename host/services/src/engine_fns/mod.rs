//! The `engine::*` functions (PROTOCOL.md §5.1, §5.2): the handshake, listings of workers,
//! functions, trigger types and bindings, trigger registration from a call, data channels; and
//! the engine-fired trigger types `engine::functions-available` and
//! `engine::workers-available`. Config entry `iii-engine-functions`; always on.

mod listing;
mod views;

use iii_protocol::codes;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{
    BoxFut, CallCtx, CancellationToken, Configured, Core, Entry, FunctionSpec, PrepareCx, Prepared,
    Registrar, Reply, Service, ServiceInfo, StartError, TriggerTypeSpec, DEFAULT_NS,
};
use iii_protocol::ErrorBody;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use iii_core::service::schema_of;
use listing::{functions_answer, ListingCache};
use views::{
    binding_summary, binding_worker_name, contains_ci, function_detail, function_summary,
    relevance, trigger_type_info, worker_summaries,
};

const WORKER: &str = "iii-engine-functions";

/// The engine functions service.
pub struct EngineFunctions;

struct Ready;

impl Service for EngineFunctions {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: WORKER,
            worker: WORKER,
            deprecated_names: &[],
            repeatable: false,
            always_on: true,
        }
    }

    fn configure(&self, _entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        // Upstream's entry carries no settings this engine reads; any `config:` is accepted.
        Ok(Box::new(Ready))
    }
}

#[async_trait::async_trait]
impl Configured for Ready {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        Ok(Box::new(Ready))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Engine types that fire from engine events; arming needs nothing.
struct EventTriggerType;

impl BuiltinTriggerType for EventTriggerType {
    fn register(&self, _b: &Binding) -> Result<(), String> {
        Ok(())
    }
    fn unregister(&self, _b: &Binding) {}
}

impl Prepared for Ready {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        install(reg);
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        Some(Box::pin(watch_functions(
            core,
            Duration::from_secs(5),
            stop,
        )))
    }
}

fn obj(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

fn list_of(key: &str) -> Value {
    obj(json!({ key: {"type": "array", "items": {"type": "object"}} }))
}

#[derive(JsonSchema)]
#[allow(
    dead_code,
    reason = "only its schema is used: the handshake reads the raw input"
)]
struct RegisterIn {
    /// Worker name, unique per namespace among live connections.
    name: Option<String>,
    /// Namespace for this connection's registrations (default `default`).
    namespace: Option<String>,
    runtime: Option<String>,
    version: Option<String>,
    description: Option<String>,
    os: Option<String>,
    pid: Option<u64>,
    isolation: Option<Value>,
    telemetry: Option<Value>,
}

#[derive(Deserialize, JsonSchema)]
struct WorkersListIn {
    search: Option<String>,
    runtime: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct WorkerInfoIn {
    name: String,
    namespace: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct FunctionsListIn {
    search: Option<String>,
    prefix: Option<String>,
    worker: Option<String>,
    workers: Option<Vec<String>>,
    #[serde(default)]
    include_internal: bool,
}

#[derive(Deserialize, JsonSchema)]
struct FunctionsInfoIn {
    function_id: Option<String>,
    /// At most 32.
    function_ids: Option<Vec<String>>,
    namespace: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct TypesListIn {
    search: Option<String>,
    prefix: Option<String>,
    worker: Option<String>,
    #[serde(default)]
    include_internal: bool,
}

#[derive(Deserialize, JsonSchema)]
struct IdIn {
    id: String,
}

#[derive(Deserialize, JsonSchema)]
struct TypeInfoIn {
    id: String,
    namespace: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct BindingsListIn {
    search: Option<String>,
    trigger_type: Option<String>,
    function_id: Option<String>,
    worker: Option<String>,
    #[serde(default)]
    include_internal: bool,
}

#[derive(Deserialize, JsonSchema)]
struct RegisterTriggerIn {
    trigger_type: String,
    function_id: String,
    config: Option<Value>,
    metadata: Option<Value>,
    trigger_namespace: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct ChannelIn {
    /// Frames buffered between writer and reader (1-1024, default 64).
    buffer_size: Option<i64>,
}

fn install(reg: &mut Registrar<'_>) {
    let ev: Arc<dyn BuiltinTriggerType> = Arc::new(EventTriggerType);
    reg.trigger_type(TriggerTypeSpec {
        id: "engine::functions-available".into(),
        description: "Fires when the set of registered functions changes".into(),
        config_schema: None,
        request_schema: Some(obj(
            json!({"event": {"type": "string"}, "functions": {"type": "array"}}),
        )),
        response_schema: None,
        provider: ev.clone(),
    });
    reg.trigger_type(TriggerTypeSpec {
        id: "engine::workers-available".into(),
        description: "Fires when a worker connects, disconnects or registers".into(),
        config_schema: None,
        request_schema: Some(obj(
            json!({"event": {"type": "string"}, "worker_id": {"type": "string"}}),
        )),
        response_schema: None,
        provider: ev,
    });

    reg.function(
        // Raw input: the handshake reads what it knows and ignores the rest, as upstream.
        FunctionSpec::raw(
            "engine::workers::register",
            "Declare this worker's name, runtime and namespace",
            |e: Core, ctx, v: Value| async move {
                match &ctx.caller {
                    Some(c) => e.register_worker(c, &v).await,
                    None => Err(ErrorBody::new(
                        codes::INVALID_ARGUMENTS,
                        "engine::workers::register must be called by a connected worker",
                    )),
                }
            },
        )
        .accepts(schema_of::<RegisterIn>())
        .returns(obj(json!({"success": {"type": "boolean"}}))),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::workers::list",
            "List connected and in-process workers",
            |e: Core, _ctx, i: WorkersListIn| async move {
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
            },
        )
        .returns(list_of("workers")),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::workers::info",
            "Details of one worker",
            |e: Core, _ctx, i: WorkerInfoIn| async move {
                let w = worker_summaries(&e)
                    .into_iter()
                    .find(|w| {
                        w["name"] == i.name.as_str()
                            && i.namespace.as_deref().is_none_or(|n| w["namespace"] == n)
                    })
                    .ok_or_else(|| {
                        ErrorBody::new(codes::NOT_FOUND, format!("Worker {} not found", i.name))
                    })?;
                let name = i.name.clone();
                let functions: Vec<Value> = e
                    .all_functions()
                    .iter()
                    .filter(|f| f.worker_name() == name)
                    .map(|f| function_summary(f))
                    .collect();
                let (trigger_types, bindings) = {
                    let reg = e.triggers();
                    let types: Vec<Value> = reg
                        .types()
                        .iter()
                        .filter(|t| t.worker_name() == name)
                        .map(|t| json!({"id": t.id, "namespace": t.namespace, "description": t.description}))
                        .collect();
                    let bindings: Vec<Binding> = reg.bindings();
                    (types, bindings)
                };
                let bindings: Vec<Value> = bindings
                    .iter()
                    .filter(|b| {
                        b.owner.and_then(|o| e.conn(o)).and_then(|c| c.name()).as_deref()
                            == Some(name.as_str())
                    })
                    .map(|b| json!({"id": b.id, "trigger_type": b.trigger_type, "function_id": b.function_id, "config": b.config}))
                    .collect();
                let mut worker = w.clone();
                worker["internal"] = json!(w["runtime"] == "engine");
                Ok(json!({"worker": worker, "functions": functions, "trigger_types": trigger_types, "registered_triggers": bindings}))
            },
        )
        .returns(obj(json!({"worker": {"type": "object"}, "functions": {"type": "array"},
            "trigger_types": {"type": "array"}, "registered_triggers": {"type": "array"}}))),
    );
    let cache = Arc::new(ListingCache::default());
    reg.function(
        FunctionSpec::typed_reply(
            "engine::functions::list",
            "List registered functions",
            move |e: Core, ctx: CallCtx, i: FunctionsListIn| {
                let cache = cache.clone();
                async move {
                    let snapshot = cache.snapshot(&e);
                    // RBAC hides the rows the caller may not call (§9.4).
                    let access = ctx.access().cloned();
                    let filtered = i.search.is_some()
                        || i.prefix.is_some()
                        || i.worker.is_some()
                        || i.workers.is_some()
                        || access.is_some();
                    if !filtered {
                        // The common poll: served from text serialised once per change.
                        return snapshot.unfiltered(i.include_internal).map(Reply::Shared);
                    }
                    let mut list: Vec<(u32, &Value)> = Vec::new();
                    for f in &snapshot.listed {
                        if f.hidden && !i.include_internal {
                            continue;
                        }
                        if access
                            .as_ref()
                            .is_some_and(|a| a.may_call(&e, &f.func.id, &f.func.namespace).is_err())
                        {
                            continue;
                        }
                        if i.prefix
                            .as_deref()
                            .is_some_and(|p| !f.func.id.starts_with(p))
                        {
                            continue;
                        }
                        if i.worker.as_deref().is_some_and(|w| w != f.worker_name) {
                            continue;
                        }
                        if i.workers
                            .as_ref()
                            .is_some_and(|ws| !ws.contains(&f.worker_name))
                        {
                            continue;
                        }
                        let score = match &i.search {
                            None => 0,
                            Some(s) => {
                                match relevance(
                                    &f.func.id,
                                    f.func.description.as_deref().unwrap_or(""),
                                    s,
                                ) {
                                    Some(score) => score,
                                    None => continue,
                                }
                            }
                        };
                        list.push((score, &f.summary));
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
                    functions_answer(list.into_iter().map(|(_, v)| v)).map(Reply::Shared)
                }
            },
        )
        .returns(list_of("functions")),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::functions::info",
            "Description and schemas of functions",
            |e: Core, ctx: CallCtx, i: FunctionsInfoIn| async move {
                let access = ctx.access().cloned();
                // RBAC: a function the caller may not call is not described (§9.4).
                let allowed = |id: &str| {
                    access.as_ref().map_or(Ok(()), |a| {
                        a.may_call(&e, id, i.namespace.as_deref().unwrap_or(DEFAULT_NS))
                    })
                };
                match (i.function_id.clone(), i.function_ids.clone()) {
                    (Some(id), None) => {
                        allowed(&id)?;
                        function_detail(&e, &id, i.namespace.as_deref())
                    }
                    (None, Some(ids)) => {
                        if ids.len() > 32 {
                            return Err(ErrorBody::new(
                                codes::INVALID_ARGUMENTS,
                                "function_ids accepts at most 32 ids",
                            ));
                        }
                        let functions: Vec<Value> = ids
                            .iter()
                            .map(|id| {
                                if allowed(id).is_err() {
                                    return json!({"function_id": id, "error": codes::INFO_ROW_FORBIDDEN});
                                }
                                function_detail(&e, id, i.namespace.as_deref()).unwrap_or_else(
                                    |_| json!({"function_id": id, "error": codes::INFO_ROW_NOT_FOUND}),
                                )
                            })
                            .collect();
                        Ok(json!({ "functions": functions }))
                    }
                    _ => Err(ErrorBody::new(
                        codes::INVALID_ARGUMENTS,
                        "pass exactly one of `function_id` or `function_ids`",
                    )),
                }
            },
        )
        .returns(json!({"type": "object", "description": "one function's detail (function_id, namespace, worker_name, description, request_schema, response_schema, registered_triggers), or {functions: [...]} for function_ids"})),
    );
    for (id, description) in [
        ("engine::triggers::list", "List trigger types"),
        (
            "engine::trigger-types::list",
            "List trigger types (alias of engine::triggers::list)",
        ),
    ] {
        reg.function(
            FunctionSpec::typed(id, description, |e: Core, _ctx, i: TypesListIn| async move {
                let types = e.triggers().types();
                let list: Vec<Value> = types
                    .iter()
                    .filter(|t| i.include_internal || !t.id.starts_with("engine::"))
                    .filter(|t| i.prefix.as_deref().is_none_or(|p| t.id.starts_with(p)))
                    .filter(|t| {
                        i.search.as_deref().is_none_or(|s| {
                            contains_ci(&t.id, s) || contains_ci(&t.description, s)
                        })
                    })
                    .filter(|t| i.worker.as_deref().is_none_or(|w| t.worker_name() == w))
                    .map(|t| json!({"id": t.id, "namespace": t.namespace, "worker_name": t.worker_name(), "description": t.description}))
                    .collect();
                Ok(json!({ "triggers": list }))
            })
            .returns(list_of("triggers")),
        );
    }
    reg.function(
        FunctionSpec::typed(
            "engine::triggers::info",
            "Details and schemas of a trigger type",
            |e: Core, _ctx, i: TypeInfoIn| async move {
                trigger_type_info(&e, &i.id, i.namespace.as_deref()).ok_or_else(|| {
                    ErrorBody::new(codes::NOT_FOUND, format!("Trigger type {} not found", i.id))
                })
            },
        )
        .returns(obj(
            json!({"id": {"type": "string"}, "namespace": {"type": "string"},
            "worker_name": {"type": "string"}, "description": {"type": "string"},
            "instance_count": {"type": "integer"}, "configuration_schema": {},
            "request_schema": {}, "response_schema": {}}),
        )),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::registered-triggers::list",
            "List trigger bindings",
            |e: Core, _ctx, i: BindingsListIn| async move {
                let bindings = e.triggers().bindings();
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
            },
        )
        .returns(list_of("registered_triggers")),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::registered-triggers::info",
            "Details of one trigger binding",
            |e: Core, _ctx, i: IdIn| async move {
                let b = e.triggers().binding(&i.id).ok_or_else(|| {
                    ErrorBody::new(codes::NOT_FOUND, format!("Trigger {} not found", i.id))
                })?;
                let w = binding_worker_name(&e, &b);
                let mut out = binding_summary(&b, &w);
                out["metadata"] = b.metadata.clone().unwrap_or(Value::Null);
                out["trigger"] =
                    trigger_type_info(&e, &b.trigger_type, None).unwrap_or(Value::Null);
                out["function"] =
                    function_detail(&e, &b.function_id, Some(&b.namespace)).unwrap_or(Value::Null);
                out.as_object_mut().map(|o| o.remove("config_summary"));
                Ok(out)
            },
        )
        .returns(obj(
            json!({"id": {"type": "string"}, "trigger_type": {"type": "string"},
            "function_id": {"type": "string"}, "worker_name": {"type": "string"}, "config": {},
            "metadata": {}, "trigger": {}, "function": {}}),
        )),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::register_trigger",
            "Register a trigger binding not owned by any connection",
            |e: Core, ctx: CallCtx, i: RegisterTriggerIn| async move {
                let access = ctx.access().cloned();
                if let Some(a) = &access {
                    if !a.may_bind_trigger_type(&i.trigger_type) {
                        return Err(ErrorBody::new(
                            codes::FORBIDDEN,
                            format!("trigger type '{}' not allowed for this session (allowed_trigger_types)", i.trigger_type),
                        ));
                    }
                }
                if i.trigger_namespace
                    .as_deref()
                    .is_some_and(|n| n.trim().is_empty())
                {
                    return Err(ErrorBody::new(
                        codes::INVALID_NAMESPACE,
                        "namespace must not be blank",
                    ));
                }
                let config = i.config.unwrap_or(Value::Null);
                // The session's payload checks (PROTOCOL.md §3.9), against the type the binding
                // resolves to now.
                if let Some(v) = ctx.validator() {
                    let schema = e.triggers().config_schema(
                        &i.trigger_type,
                        i.trigger_namespace.as_deref(),
                        DEFAULT_NS,
                    );
                    if let Some(schema) = schema {
                        v.check_trigger_config(&i.trigger_type, &schema, &config)?;
                    }
                }
                let id = iii_protocol::format_uuid(iii_core::new_id());
                let b = Binding {
                    id: id.clone(),
                    trigger_type: i.trigger_type,
                    // A session with a prefix names its own functions unprefixed (§9.7).
                    function_id: iii_core::access::prefixed(access.as_ref(), &i.function_id),
                    config,
                    metadata: i.metadata,
                    owner: None,
                    namespace: DEFAULT_NS.into(),
                    trigger_namespace: i.trigger_namespace,
                    home_namespace: DEFAULT_NS.into(),
                    provider: None,
                };
                let mut sends = Vec::new();
                let ack = {
                    let mut t = e.triggers();
                    t.upsert(b, &mut sends)?;
                    t.expect_ack(&id)
                };
                iii_core::triggers::deliver(sends).await;
                // A worker provider's rejection is returned synchronously; no answer in 10 s
                // counts as accepted.
                if let Some(rx) = ack {
                    match tokio::time::timeout(Duration::from_secs(10), rx).await {
                        Ok(Ok(Some(err))) => {
                            return Err(ErrorBody::new(
                                codes::TRIGGER_REGISTRATION_FAILED,
                                err.message,
                            ))
                        }
                        Ok(_) => {}
                        Err(_) => e.triggers().forget_ack(&id),
                    }
                }
                Ok(json!({ "id": id }))
            },
        )
        .returns(obj(json!({"id": {"type": "string"}}))),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::unregister_trigger",
            "Remove a trigger binding",
            |e: Core, ctx, i: IdIn| async move {
                let by = ctx.caller.as_ref().map(|c| c.id);
                let exists = e.triggers().binding(&i.id).is_some();
                let mut sends = Vec::new();
                let removed = e.triggers().unregister_owned(&i.id, by, true, &mut sends);
                iii_core::triggers::deliver(sends).await;
                if exists && !removed {
                    return Err(ErrorBody::new(
                        codes::FORBIDDEN,
                        format!("trigger {} belongs to another worker", i.id),
                    ));
                }
                Ok(json!({ "removed": removed }))
            },
        )
        .returns(obj(json!({"removed": {"type": "boolean"}}))),
    );
    reg.function(
        FunctionSpec::typed(
            "engine::channels::create",
            "Create a data channel",
            |e: Core, _ctx, i: ChannelIn| async move {
                use iii_core::channels::{Direction, DEFAULT_BUFFER, MAX_BUFFER};
                let n = i
                    .buffer_size
                    .unwrap_or(DEFAULT_BUFFER as i64)
                    .clamp(1, MAX_BUFFER as i64) as usize;
                let ch = e.channels().create(n);
                Ok(json!({ "writer": ch.reference(Direction::Write), "reader": ch.reference(Direction::Read) }))
            },
        )
        .returns(obj(json!({"writer": {"type": "object"}, "reader": {"type": "object"}}))),
    );
}

/// Polls the function set every `every` and fires `engine::functions-available` on change.
async fn watch_functions(core: Core, every: Duration, stop: CancellationToken) {
    use std::hash::{Hash, Hasher};
    let mut last: Option<u64> = None;
    let mut last_generation: Option<u64> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        // Unchanged generation, unchanged set: no need to list and hash every function.
        let generation = core.functions_generation();
        if last_generation == Some(generation) {
            continue;
        }
        last_generation = Some(generation);
        let funcs = core.all_functions();
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
            let payload = json!({"event": "functions_changed", "functions": list});
            core.fire("engine::functions-available", payload, |_| true);
        }
        last = Some(now);
    }
}
