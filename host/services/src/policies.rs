//! WebAssembly policies as in-process functions. Config entry `policies` (worker
//! `iii-policies`):
//!
//! ```yaml
//! - name: policies
//!   config:
//!     policies:
//!       - id: policy::bearer               # the function id it is exposed as; unique, not engine::*
//!         path: ./policies/bearer.wasm     # a component (iii:policy/policy@0.1.0) or an Extism module
//!         config: {tokens: [s3cret]}       # the policy's own config (its `config` import)
//!         limits: {memory_mb: 32, deadline_ms: 100}   # per call; these are the defaults
//! ```
//!
//! Each entry registers one function that dispatches on the shape of its input, so RBAC, the
//! listener middleware and HTTP middleware can name a policy exactly as they name an SDK
//! function:
//!
//! | input | hook | answer |
//! |---|---|---|
//! | `{headers, query_params, ip_address}` (§9.2) | authenticate | the `AuthResult` object; deny → error `policy_denied` |
//! | `{function_id, payload, action, context, namespace}` (§9.5) | on-invocation | proceed(p) → the target's result for `p`; reject → the policy's error |
//! | `{phase: "preHandler", request, context}` (§4.6.1) | on-http-request | `{"action":"continue"}` or `{"action":"respond","response":{…}}` |
//! | `{trigger_type_id, …}` / `{trigger_id, trigger_type, …}` / `{function_id, …}` without `payload` (§9.6) | on-registration | allow → `{}`; rewrite(j) → `j`; deny → `null` |
//!
//! A policy that cannot decide (trap, deadline, memory cap, bad output, missing hook) answers
//! `policy_failed`: the caller denies. A policy that fails to load fails start-up.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use iii_adapter_api::policy::{
    AuthDecision, Connection, HttpDecision, HttpRequest, Invocation, InvocationDecision, Policy,
    PolicyWorld, RegistrationDecision, RegistrationKind,
};
use iii_adapter_api::{AdapterError, AdapterLoader, AdapterSpec, Grants};
use iii_core::config::ConfigError;
use iii_core::{
    CallCtx, Configured, Core, Entry, FunctionSpec, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError,
};
use iii_protocol::{codes, ErrorBody};
use serde_json::{json, Map, Value};

/// The policies service.
pub struct Policies;

/// One `policies:` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyEntry {
    /// The function id the policy is exposed as.
    pub id: String,
    /// The `.wasm` file, relative to the project directory.
    pub path: PathBuf,
    /// The policy's own config.
    pub config: Map<String, Value>,
    /// Per-call memory cap in MiB (`None`: the plugin host's policy default, 32).
    pub memory_mb: Option<u64>,
    /// Per-call deadline in ms (`None`: the plugin host's policy default, 100).
    pub deadline_ms: Option<u64>,
    /// Fuel per call (needs a host with fuel metering).
    pub fuel: Option<u64>,
}

impl PolicyEntry {
    /// The spec the plugin host loads.
    pub fn spec(&self) -> AdapterSpec {
        AdapterSpec::path(self.path.clone())
            .with_config(self.config.clone())
            .with_grants(Grants {
                memory_mb: self.memory_mb,
                deadline_ms: self.deadline_ms,
                fuel: self.fuel,
                ..Grants::default()
            })
    }
}

/// What the `policies` entry configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoliciesConfig {
    /// The policies, in config order.
    pub policies: Vec<PolicyEntry>,
}

impl Service for Policies {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "policies",
            worker: "iii-policies",
            deprecated_names: &[],
            repeatable: false,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut pc = PoliciesConfig::default();
        let Some(e) = entries.first() else {
            return Ok(Box::new(pc));
        };
        let at = e.key("config");
        let r = &e.reader;
        let Some(m) = r.mapping(e.config, &at)? else {
            return Ok(Box::new(pc));
        };
        r.check_keys(m, &at, &["policies"])?;
        let list = match m.get("policies") {
            None | Some(serde_yaml::Value::Null) => return Ok(Box::new(pc)),
            Some(serde_yaml::Value::Sequence(s)) => s,
            Some(other) => {
                return Err(r.invalid(&format!("{at}.policies"), "a list of policies", other))
            }
        };
        let mut seen = HashSet::new();
        for (i, item) in list.iter().enumerate() {
            let at = format!("{at}.policies[{i}]");
            let p = r
                .mapping(item, &at)?
                .ok_or_else(|| r.invalid(&at, "a mapping", item))?;
            r.check_keys(p, &at, &["id", "path", "config", "limits"])?;
            let get = |k: &str| {
                p.get(k)
                    .ok_or_else(|| r.error(format!("`{at}.{k}` is required")))
            };
            let id = r.string(get("id")?, &format!("{at}.id"))?;
            if id.trim().is_empty() || id.starts_with("engine::") {
                return Err(r.error(format!(
                    "`{at}.id` must be a function id outside `engine::`, got \"{id}\""
                )));
            }
            if !seen.insert(id.clone()) {
                return Err(r.error(format!("`{at}.id`: \"{id}\" is used by an earlier policy")));
            }
            let path = PathBuf::from(r.string(get("path")?, &format!("{at}.path"))?);
            let config = match p.get("config") {
                None | Some(serde_yaml::Value::Null) => Map::new(),
                Some(c @ serde_yaml::Value::Mapping(_)) => match serde_json::to_value(c) {
                    Ok(Value::Object(m)) => m,
                    _ => {
                        return Err(
                            r.error(format!("`{at}.config` must be a mapping with string keys"))
                        )
                    }
                },
                Some(other) => return Err(r.invalid(&format!("{at}.config"), "a mapping", other)),
            };
            let mut entry = PolicyEntry {
                id,
                path,
                config,
                memory_mb: None,
                deadline_ms: None,
                fuel: None,
            };
            let lat = format!("{at}.limits");
            if let Some(l) = p.get("limits").map(|l| r.mapping(l, &lat)).transpose()? {
                let Some(l) = l else {
                    pc.policies.push(entry);
                    continue;
                };
                r.check_keys(l, &lat, &["memory_mb", "deadline_ms", "fuel"])?;
                let positive = |k: &str| -> Result<Option<u64>, ConfigError> {
                    let Some(v) = l.get(k) else { return Ok(None) };
                    let n = r.u64(v, &format!("{lat}.{k}"))?;
                    if n == 0 {
                        return Err(r.invalid(
                            &format!("{lat}.{k}"),
                            "an integer of at least 1",
                            v,
                        ));
                    }
                    Ok(Some(n))
                };
                entry.memory_mb = positive("memory_mb")?;
                entry.deadline_ms = positive("deadline_ms")?;
                entry.fuel = positive("fuel")?;
            }
            pc.policies.push(entry);
        }
        Ok(Box::new(pc))
    }
}

#[async_trait::async_trait]
impl Configured for PoliciesConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let mut loaded = Vec::new();
        if !self.policies.is_empty() {
            let loader: Arc<dyn AdapterLoader> = cx.get("policies")?;
            for p in self.policies {
                let policy = iii_adapter_api::load::<PolicyWorld>(&*loader, &p.spec())
                    .await
                    .map_err(|e: AdapterError| StartError::Service {
                        service: "policies",
                        message: format!(
                            "policy `{}` ({}) failed to load: {e}",
                            p.id,
                            p.path.display()
                        ),
                    })?;
                tracing::info!(policy = %p.id, path = %p.path.display(), "policy loaded");
                loaded.push((p, policy));
            }
        }
        Ok(Box::new(PoliciesService { loaded }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service: each policy with its entry.
pub struct PoliciesService {
    loaded: Vec<(PolicyEntry, Arc<dyn Policy>)>,
}

impl PoliciesService {
    /// A service over already loaded policies (for tests).
    pub fn new(loaded: Vec<(PolicyEntry, Arc<dyn Policy>)>) -> Self {
        PoliciesService { loaded }
    }
}

impl Prepared for PoliciesService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        for (entry, policy) in &self.loaded {
            let policy = policy.clone();
            let id = entry.id.clone();
            let f = FunctionSpec::raw(
                entry.id.clone(),
                format!(
                    "WebAssembly policy {}: auth function, registration hook, listener or HTTP middleware",
                    entry.path.display()
                ),
                move |core, ctx, input| {
                    let policy = policy.clone();
                    let id = id.clone();
                    async move { dispatch(&core, &ctx, &id, &*policy, input).await }
                },
            )
            .accepts(input_schema());
            reg.function(f);
        }
    }
}

fn input_schema() -> Value {
    json!({"description": "one of: the RBAC auth input {headers, query_params, ip_address}; the middleware input {function_id, payload, action, context, namespace}; the HTTP middleware input {phase, request, context}; a registration hook input", "type": "object"})
}

/// What a policy function's input asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// §9.2 auth input.
    Authenticate(Connection),
    /// §9.5 middleware input.
    Invocation(Invocation),
    /// §4.6.1 HTTP middleware input.
    Http(HttpRequest),
    /// §9.6 registration hook input.
    Registration(RegistrationKind, Value),
}

const SHAPES: &str = "{headers, query_params, ip_address} (auth), {function_id, payload, action, context, namespace} (middleware), {phase: \"preHandler\", request: {path_params, query_params, headers, method}, context} (HTTP middleware), or a registration hook input ({function_id, …} without payload, {trigger_id, trigger_type, …}, {trigger_type_id, …})";

fn bad(function_id: &str, why: impl std::fmt::Display) -> ErrorBody {
    ErrorBody::new(
        codes::DESERIALIZATION_ERROR,
        format!("Failed to deserialize input for {function_id}: {why}; a policy function accepts {SHAPES}"),
    )
}

/// HTTP middleware values are single strings; SDKs send some as lists, so take the first.
fn single_values(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let x = match x {
                        Value::Array(a) => a.first().cloned().unwrap_or(Value::Null),
                        other => other.clone(),
                    };
                    let x = match x {
                        Value::String(s) => Value::String(s),
                        Value::Null => Value::String(String::new()),
                        other => Value::String(other.to_string()),
                    };
                    (k.clone(), x)
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Tells the input shapes apart (see the module docs).
pub fn classify(function_id: &str, input: &Value) -> Result<Request, ErrorBody> {
    let Some(m) = input.as_object() else {
        return Err(bad(function_id, "the input is not an object"));
    };
    let has = |k: &str| m.contains_key(k);
    if has("phase") {
        if m.get("phase").and_then(Value::as_str) != Some("preHandler") {
            return Err(bad(function_id, "`phase` must be \"preHandler\""));
        }
        let r = m.get("request").cloned().unwrap_or(json!({}));
        let mut req = json!({
            "method": r.get("method").cloned().unwrap_or(json!("")),
            "path_params": single_values(r.get("path_params").unwrap_or(&Value::Null)),
            "query_params": single_values(r.get("query_params").unwrap_or(&Value::Null)),
            "headers": single_values(r.get("headers").unwrap_or(&Value::Null)),
        });
        req["context"] = m.get("context").cloned().unwrap_or(Value::Null);
        return serde_json::from_value(req)
            .map(Request::Http)
            .map_err(|e| bad(function_id, e));
    }
    if has("function_id") && has("payload") {
        return serde_json::from_value(input.clone())
            .map(Request::Invocation)
            .map_err(|e| bad(function_id, e));
    }
    if has("trigger_type_id") {
        return Ok(Request::Registration(
            RegistrationKind::TriggerType,
            input.clone(),
        ));
    }
    if has("trigger_id") || has("trigger_type") {
        return Ok(Request::Registration(
            RegistrationKind::Trigger,
            input.clone(),
        ));
    }
    if has("function_id") {
        return Ok(Request::Registration(
            RegistrationKind::Function,
            input.clone(),
        ));
    }
    if has("headers") || has("query_params") || has("ip_address") {
        let mut input = input.clone();
        // The stream socket's auth input (§4.6.4) names the peer `addr`, with its port.
        if let (false, Some(addr)) = (has("ip_address"), m.get("addr").and_then(Value::as_str)) {
            let ip = addr
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string())
                .unwrap_or_else(|_| addr.to_string());
            input["ip_address"] = json!(ip);
        }
        return serde_json::from_value(input)
            .map(Request::Authenticate)
            .map_err(|e| bad(function_id, e));
    }
    Err(bad(
        function_id,
        "the input has none of the accepted shapes",
    ))
}

fn failed(policy: &str, e: AdapterError) -> ErrorBody {
    // Fail closed, and say why: a trap, a deadline or the memory cap ends up here.
    tracing::warn!(policy, error = %e, "policy could not decide; denying");
    ErrorBody::new(
        codes::POLICY_FAILED,
        format!("policy function {policy} could not decide (deny): {e}"),
    )
}

/// Runs one call of the policy function `id`.
pub async fn dispatch(
    core: &Core,
    ctx: &CallCtx,
    id: &str,
    policy: &dyn Policy,
    input: Value,
) -> Result<Value, ErrorBody> {
    match classify(id, &input)? {
        Request::Authenticate(conn) => match policy.authenticate(&conn).await {
            Ok(AuthDecision::Allow(Value::Object(r))) => Ok(Value::Object(r)),
            Ok(AuthDecision::Allow(other)) => Err(ErrorBody::new(
                codes::POLICY_FAILED,
                format!("policy function {id} allowed with {other}, which is not an AuthResult object (deny)"),
            )),
            Ok(AuthDecision::Deny(why)) => {
                tracing::info!(policy = id, ip = %conn.ip_address, "connection denied: {why}");
                Err(ErrorBody::new(codes::POLICY_DENIED, why))
            }
            Err(e) => Err(failed(id, e)),
        },
        Request::Registration(kind, reg) => match policy.on_registration(kind, &reg).await {
            Ok(RegistrationDecision::Allow) => Ok(json!({})),
            Ok(RegistrationDecision::Rewrite(Value::Object(o))) => Ok(Value::Object(o)),
            Ok(RegistrationDecision::Rewrite(other)) => {
                tracing::warn!(policy = id, "registration dropped: the rewrite {other} is not an object");
                Ok(Value::Null)
            }
            Ok(RegistrationDecision::Deny(why)) => {
                tracing::info!(policy = id, kind = ?kind, "registration denied: {why}");
                Ok(Value::Null)
            }
            Err(e) => {
                tracing::warn!(policy = id, kind = ?kind, "registration dropped: {e}");
                Ok(Value::Null)
            }
        },
        Request::Invocation(call) => match policy.on_invocation(&call).await {
            Ok(InvocationDecision::Proceed(payload)) => proceed(core, ctx, &call, payload).await,
            Ok(InvocationDecision::Reject(r)) => Err(ErrorBody::new(r.code, r.message)),
            Err(e) => Err(failed(id, e)),
        },
        Request::Http(req) => match policy.on_http_request(&req).await {
            Ok(HttpDecision::Proceed) => Ok(json!({"action": "continue"})),
            Ok(HttpDecision::Respond(r)) => {
                let headers: Map<String, Value> = r
                    .headers
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(v)))
                    .collect();
                Ok(json!({"action": "respond", "response": {
                    "status_code": r.status_code, "headers": headers, "body": r.body}}))
            }
            Err(e) => Err(failed(id, e)),
        },
    }
}

/// The middleware is a proxy (§9.5): it makes the call the policy let through, with the
/// payload it chose, as the original caller's action asked.
async fn proceed(
    core: &Core,
    ctx: &CallCtx,
    call: &Invocation,
    payload: Value,
) -> Result<Value, ErrorBody> {
    let ns = if call.namespace.is_empty() {
        iii_core::DEFAULT_NS
    } else {
        call.namespace.as_str()
    };
    let metadata = ctx.metadata.as_ref().map(Value::to_string);
    match call.action.get("type").and_then(Value::as_str) {
        Some("void") => {
            core.call_void(
                ns.to_string(),
                call.function_id.clone(),
                payload.to_string(),
                metadata,
            );
            Ok(Value::Null)
        }
        Some("enqueue") => {
            let queue = call
                .action
                .get("queue")
                .and_then(Value::as_str)
                .unwrap_or("");
            let receipt = uuid::Uuid::new_v4().to_string();
            let req = iii_protocol::out::EnqueueRequest {
                queue,
                function_id: &call.function_id,
                data: payload,
                receipt: &receipt,
                traceparent: None,
                baggage: None,
                namespace: (ns != iii_core::DEFAULT_NS).then_some(ns),
            }
            .to_json();
            core.call(
                iii_core::DEFAULT_NS,
                iii_protocol::ids::functions::QUEUE_ENQUEUE,
                &req.to_string(),
                None,
                ctx.caller.as_ref(),
            )
            .await
            .map_err(|e| ErrorBody::new(codes::ENQUEUE_ERROR, e.message))?;
            Ok(json!({"messageReceiptId": receipt}))
        }
        _ => {
            let out = core
                .call(
                    ns,
                    &call.function_id,
                    &payload.to_string(),
                    metadata.as_deref(),
                    ctx.caller.as_ref(),
                )
                .await?;
            Ok(out
                .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
                .unwrap_or(Value::Null))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_adapter_api::policy::Rejection;
    use iii_adapter_api::AdapterErrorKind;
    use iii_core::testing::TestCore;

    /// A policy in Rust with fixed rules, standing in for a loaded plugin: the dispatch is
    /// what is under test, the plugins are tested in the plugin host and end to end.
    struct Rules;

    #[async_trait::async_trait]
    impl Policy for Rules {
        async fn authenticate(&self, c: &Connection) -> Result<AuthDecision, AdapterError> {
            Ok(match c.headers.iter().find(|(k, _)| k == "authorization") {
                Some((_, v)) if v == "Bearer good" => {
                    AuthDecision::Allow(json!({"context": {"sub": "ada"}}))
                }
                Some((_, v)) if v == "Bearer odd" => AuthDecision::Allow(json!([1])),
                _ => AuthDecision::Deny("no good token".into()),
            })
        }
        async fn on_registration(
            &self,
            kind: RegistrationKind,
            r: &Value,
        ) -> Result<RegistrationDecision, AdapterError> {
            Ok(match (kind, r["function_id"].as_str()) {
                (RegistrationKind::Function, Some("keep")) => RegistrationDecision::Allow,
                (RegistrationKind::Function, Some(f)) => {
                    RegistrationDecision::Rewrite(json!({"function_id": format!("t::{f}")}))
                }
                (RegistrationKind::Trigger, _) => RegistrationDecision::Deny("no triggers".into()),
                _ => RegistrationDecision::Allow,
            })
        }
        async fn on_invocation(&self, c: &Invocation) -> Result<InvocationDecision, AdapterError> {
            if c.function_id == "blocked" {
                return Ok(InvocationDecision::Reject(Rejection {
                    code: "RATE_LIMITED".into(),
                    message: "slow down".into(),
                }));
            }
            let mut p = c.payload.clone();
            p["seen_by"] = json!("policy");
            Ok(InvocationDecision::Proceed(p))
        }
        async fn on_http_request(&self, r: &HttpRequest) -> Result<HttpDecision, AdapterError> {
            if r.headers.iter().any(|(k, _)| k == "authorization") {
                return Ok(HttpDecision::Proceed);
            }
            Err(AdapterError::new(
                AdapterErrorKind::Unsupported,
                "policy `x` does not implement `on_http_request`",
            ))
        }
    }

    fn ctx() -> CallCtx {
        CallCtx {
            caller: None,
            namespace: "default".into(),
            function_id: "policy::rules".into(),
            metadata: None,
        }
    }

    async fn run(core: &Core, input: Value) -> Result<Value, ErrorBody> {
        dispatch(core, &ctx(), "policy::rules", &Rules, input).await
    }

    #[tokio::test]
    async fn auth_shape_allows_with_the_auth_result_or_denies_with_the_reason() {
        let t = TestCore::new();
        let ok = run(
            &t.core,
            json!({"headers": {"authorization": "Bearer good"}, "query_params": {}, "ip_address": "127.0.0.1"}),
        )
        .await
        .unwrap();
        assert_eq!(ok, json!({"context": {"sub": "ada"}}));
        let e = run(
            &t.core,
            json!({"headers": {}, "query_params": {}, "ip_address": "1.2.3.4"}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, codes::POLICY_DENIED);
        assert_eq!(e.message, "no good token");
        let e = run(&t.core, json!({"headers": {"authorization": "Bearer odd"}}))
            .await
            .unwrap_err();
        assert_eq!(
            e.code,
            codes::POLICY_FAILED,
            "a non-object AuthResult denies"
        );
    }

    #[test]
    fn the_stream_sockets_auth_input_gives_the_peer_ip() {
        let r = classify(
            "p",
            &json!({"headers": {}, "path": "/", "query_params": {"token": ["a"]}, "addr": "10.1.2.3:5555"}),
        )
        .unwrap();
        let Request::Authenticate(c) = r else {
            panic!("not the auth shape")
        };
        assert_eq!(c.ip_address, "10.1.2.3");
        assert_eq!(c.query_params, vec![("token".into(), vec!["a".into()])]);
    }

    #[tokio::test]
    async fn middleware_shape_proxies_to_the_target_with_the_policy_payload() {
        let t = TestCore::new();
        let log = t.recorder("svc::echo", json!({"ok": true}));
        let out = run(
            &t.core,
            json!({"function_id": "svc::echo", "payload": {"n": 1}, "action": null, "context": {}, "namespace": "default"}),
        )
        .await
        .unwrap();
        assert_eq!(
            out,
            json!({"ok": true}),
            "the target's result is the answer"
        );
        assert_eq!(log.lock()[0], json!({"n": 1, "seen_by": "policy"}));
        let e = run(
            &t.core,
            json!({"function_id": "blocked", "payload": {}, "action": null, "context": {}, "namespace": "default"}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.code.as_str(), e.message.as_str()),
            ("RATE_LIMITED", "slow down")
        );
        let e = run(
            &t.core,
            json!({"function_id": "svc::missing", "payload": {}, "action": null, "context": {}, "namespace": "default"}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.code,
            codes::FUNCTION_NOT_FOUND,
            "the target's error is passed on"
        );
        // void: the target is called, the caller gets null at once.
        let out = run(
            &t.core,
            json!({"function_id": "svc::echo", "payload": {"n": 2}, "action": {"type": "void"}, "context": {}, "namespace": "default"}),
        )
        .await
        .unwrap();
        assert_eq!(out, Value::Null);
        let got = TestCore::wait_for(&log, 2, 2000).await;
        assert_eq!(got[1]["n"], json!(2));
    }

    #[tokio::test]
    async fn http_shape_continues_or_fails_closed() {
        let t = TestCore::new();
        let out = run(
            &t.core,
            json!({"phase": "preHandler", "request": {"path_params": {}, "query_params": {"q": ["x"]}, "headers": {"authorization": "x"}, "method": "GET"}, "context": {}}),
        )
        .await
        .unwrap();
        assert_eq!(out, json!({"action": "continue"}));
        let e = run(
            &t.core,
            json!({"phase": "preHandler", "request": {"headers": {}, "method": "GET"}, "context": {}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, codes::POLICY_FAILED);
        assert!(e.message.contains("on_http_request"), "{}", e.message);
    }

    #[tokio::test]
    async fn registration_shapes_allow_rewrite_or_drop() {
        let t = TestCore::new();
        let f = |id: &str| json!({"function_id": id, "description": null, "metadata": null, "namespace": "default", "context": {}});
        assert_eq!(run(&t.core, f("keep")).await.unwrap(), json!({}));
        assert_eq!(
            run(&t.core, f("x")).await.unwrap(),
            json!({"function_id": "t::x"})
        );
        let trig = json!({"trigger_id": "t1", "trigger_type": "http", "function_id": "f", "config": {}, "metadata": null, "namespace": "default", "context": {}});
        assert_eq!(
            run(&t.core, trig).await.unwrap(),
            Value::Null,
            "denied: dropped"
        );
        let tt = json!({"trigger_type_id": "mine", "description": "d", "context": {}});
        assert_eq!(run(&t.core, tt).await.unwrap(), json!({}));
    }

    #[test]
    fn other_inputs_name_the_accepted_shapes() {
        for input in [
            json!(null),
            json!([1]),
            json!({"what": 1}),
            json!({"phase": "onResponse"}),
        ] {
            let e = classify("policy::x", &input).unwrap_err();
            assert_eq!(e.code, codes::DESERIALIZATION_ERROR);
            assert!(
                e.message.contains("ip_address") && e.message.contains("preHandler"),
                "{}",
                e.message
            );
        }
        let r = classify(
            "p",
            &json!({"phase": "preHandler", "request": {"query_params": {"q": ["a", "b"]}, "headers": {"h": "v"}, "method": "GET"}, "context": null}),
        )
        .unwrap();
        let Request::Http(h) = r else { panic!("{r:?}") };
        assert_eq!(h.query_params, vec![("q".to_string(), "a".to_string())]);
    }

    #[test]
    fn config_entries_are_checked() {
        use iii_core::config::EntryReader;
        let parse = |yaml: &str| {
            let config: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
            let e = Entry {
                at: "workers[0](policies)".into(),
                name: "policies",
                config: &config,
                reader: EntryReader { path: "c.yaml" },
            };
            Policies
                .configure(&[e])
                .map(|c| c.as_any().downcast_ref::<PoliciesConfig>().unwrap().clone())
                .map_err(|e| e.to_string())
        };
        let c = parse("policies:\n  - {id: policy::a, path: ./a.wasm, config: {tokens: [t]}, limits: {memory_mb: 8, deadline_ms: 50}}\n").unwrap();
        let p = &c.policies[0];
        assert_eq!(p.id, "policy::a");
        assert_eq!(p.config["tokens"], json!(["t"]));
        assert_eq!(p.spec().grants.memory_mb, Some(8));
        assert_eq!(p.spec().grants.deadline_ms, Some(50));
        let e = parse("policies:\n  - {id: a, path: x}\n  - {id: a, path: y}\n").unwrap_err();
        assert!(e.contains("earlier policy"), "{e}");
        let e = parse("policies:\n  - {id: engine::x, path: x}\n").unwrap_err();
        assert!(e.contains("engine::"), "{e}");
        let e = parse("policies:\n  - {id: a}\n").unwrap_err();
        assert!(e.contains("path"), "{e}");
        let e = parse("policies:\n  - {id: a, path: x, limits: {deadline_ms: 0}}\n").unwrap_err();
        assert!(e.contains("deadline_ms"), "{e}");
        let e = parse("policies:\n  - {id: a, path: x, grants: {}}\n").unwrap_err();
        assert!(e.contains("grants"), "{e}");
    }
}
