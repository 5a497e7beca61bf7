//! Worker RBAC and listener middleware (PROTOCOL.md §9) through the official Rust SDK
//! (`iii-sdk` 0.25.0).
//!
//! Each test runs an engine with three worker listeners: a trusted one, an `rbac` one (auth
//! function, `expose_functions` by match, metadata and namespace, the three registration
//! hooks) and one with `middleware_function_id`. The auth function, hooks and middleware are
//! SDK functions of a worker on the trusted listener; every other client is an SDK worker on
//! a gated listener, so what is asserted is what an SDK user sees.

#![allow(
    deprecated,
    reason = "register_trigger / register_trigger_type are deprecated in iii-sdk 0.25 in favour of observe(), which a 0.23-compatible engine does not offer; they are the wire path under test"
)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iii_sdk::protocol::{RegisterTriggerInput, TriggerRequest};
use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::triggers::{TriggerConfig, TriggerHandler};
use iii_sdk::{
    register_worker, Error, IIIClient, InitOptions, MiddlewareFunctionInput, RegisterFunction,
    RegisterTriggerType, TriggerAction,
};
use iii_sdk_rust_tests::*;
use iii_tests::{free_port, EngineProc};
use serde_json::{json, Value};

/// Every call the policy worker served: (function id, input, invocation metadata).
type Calls = Arc<Mutex<Vec<(String, Value, Option<Value>)>>>;

struct Setup {
    engine: EngineProc,
    rbac_port: u16,
    mw_port: u16,
    policy: IIIClient,
    calls: Calls,
    others: Vec<IIIClient>,
}

impl Setup {
    fn of(&self, fid: &str) -> Vec<Value> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(f, _, _)| f == fid)
            .map(|(_, d, _)| d.clone())
            .collect()
    }

    fn auth_attempts(&self, token: &str) -> usize {
        self.of("pol::auth")
            .iter()
            .filter(|d| d["query_params"]["token"][0] == token)
            .count()
    }

    async fn trusted_ids(&self) -> HashSet<String> {
        let r = call(
            &self.policy,
            "engine::functions::list",
            json!({"prefix": ""}),
        )
        .await
        .expect("functions::list");
        r["functions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["function_id"].as_str().unwrap().to_string())
            .collect()
    }

    fn stop(self) {
        for c in self.others.iter().chain([&self.policy]) {
            stop(c);
        }
        drop(self.engine);
    }
}

/// The grants for each `?token=` (or an `Authorization` header).
fn auth(input: &Value) -> Result<Value, Error> {
    if input["headers"]["authorization"] == "Bearer from-header" {
        return Ok(json!({"allowed_functions": ["extra::one"], "context": {"via": "header"}}));
    }
    match input["query_params"]["token"][0].as_str().unwrap_or("") {
        "full" => Ok(json!({
            "namespaces": {"default": [], "tenant": ["t::*"]},
            "allowed_functions": ["extra::one"],
            "forbidden_functions": ["pub::secret", "engine::log::info"],
            "context": {"user": "u-full"},
        })),
        "bare" => Ok(json!({})),
        "prefix" => Ok(json!({"function_registration_prefix": "p1", "context": {"tenant": "p1"}})),
        "types" => Ok(json!({
            "allow_trigger_type_registration": true,
            "allowed_trigger_types": ["mine"],
            "context": {"user": "u-types"},
        })),
        "null" => Ok(Value::Null),
        _ => Err(Error::Handler("unknown token".into())),
    }
}

fn on_fn(d: &Value) -> Result<Value, Error> {
    let id = d["function_id"].as_str().unwrap_or("");
    if id.starts_with("drop::") {
        return Err(Error::Handler("no such function here".into()));
    }
    if id.starts_with("nullres::") {
        return Ok(Value::Null);
    }
    if let Some(rest) = id.strip_prefix("rename::") {
        return Ok(
            json!({"function_id": format!("renamed::{rest}"), "description": "set by hook"}),
        );
    }
    Ok(json!({}))
}

fn on_trigger(d: &Value) -> Result<Value, Error> {
    Ok(match d["config"]["k"].as_str() {
        Some("drop") => Value::Null,
        Some("rewrite") => json!({"config": {"k": "rewritten"}}),
        _ => json!({}),
    })
}

fn on_type(d: &Value) -> Result<Value, Error> {
    match d["trigger_type_id"].as_str() {
        Some("bad") => Err(Error::Handler("no such type".into())),
        Some("renameme") => Ok(json!({"trigger_type_id": "renamed-type"})),
        _ => Ok(json!({"description": "checked by hook"})),
    }
}

fn record(calls: &Calls, fid: &str, d: &Value) {
    let metadata = iii_sdk::current_invocation().and_then(|c| c.metadata);
    calls
        .lock()
        .unwrap()
        .push((fid.to_string(), d.clone(), metadata));
}

/// Registers `fid` on `w`: records the call and answers with `f(input)`.
fn serve(
    w: &IIIClient,
    calls: &Calls,
    fid: &str,
    metadata: Option<Value>,
    f: fn(&Value) -> Result<Value, Error>,
) {
    let (calls, id) = (calls.clone(), fid.to_string());
    let mut reg = RegisterFunction::new_async(move |d: Value| {
        let (calls, id) = (calls.clone(), id.clone());
        async move {
            record(&calls, &id, &d);
            f(&d)
        }
    });
    if let Some(md) = metadata {
        reg = reg.metadata(md);
    }
    w.register_function(fid, reg);
}

fn served(d: &Value) -> Result<Value, Error> {
    let id = iii_sdk::current_invocation()
        .map(|c| c.function_id)
        .unwrap_or_default();
    Ok(json!({"served": id, "data": d}))
}

async fn setup() -> Setup {
    let (rbac_port, mw_port) = (free_port(), free_port());
    let engine = EngineProc::start_with(move |ws, _| {
        format!(
            r#"workers:
  - name: iii-worker-manager
    config: {{host: 127.0.0.1, port: {ws}}}
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {rbac_port}
      rbac:
        auth_function_id: pol::auth
        expose_functions:
          - match("link::*")
          - metadata: {{ public: true }}
          - metadata: {{ tier: match("pro*") }}
          - {{ match: "svc::*", namespace: orders }}
          - match("engine::functions::*")
        on_function_registration_function_id: pol::on_fn
        on_trigger_registration_function_id: pol::on_trigger
        on_trigger_type_registration_function_id: pol::on_type
  - name: iii-worker-manager
    config:
      host: 127.0.0.1
      port: {mw_port}
      middleware_function_id: pol::mw
      rbac:
        auth_function_id: pol::auth
        expose_functions: [match("link::*"), match("engine::functions::list")]
"#
        )
    });
    let calls: Calls = Arc::default();
    let policy = connect(&engine.url(), &unique_name("rs-policy"));
    serve(&policy, &calls, "pol::auth", None, auth);
    serve(&policy, &calls, "pol::on_fn", None, on_fn);
    serve(&policy, &calls, "pol::on_trigger", None, on_trigger);
    serve(&policy, &calls, "pol::on_type", None, on_type);
    for (fid, md) in [
        ("link::echo", None),
        ("pub::a", Some(json!({"public": true}))),
        ("pub::secret", Some(json!({"public": true}))),
        ("pro::b", Some(json!({"tier": "pro-2"}))),
        ("priv::c", Some(json!({"public": false}))),
        ("extra::one", None),
    ] {
        serve(&policy, &calls, fid, md, served);
    }
    // The middleware proxies: it calls the target itself, with the payload rewritten.
    let (proxy, mw_calls) = (policy.clone(), calls.clone());
    policy.register_function(
        "pol::mw",
        RegisterFunction::new_async(move |d: Value| {
            let (proxy, calls) = (proxy.clone(), mw_calls.clone());
            async move {
                record(&calls, "pol::mw", &d);
                let mid: MiddlewareFunctionInput = serde_json::from_value(d)?;
                if mid.payload["reject"] == true {
                    return Err(Error::Remote {
                        code: "REJECTED".into(),
                        message: "middleware said no".into(),
                        stacktrace: None,
                    });
                }
                let mut payload = mid.payload.clone();
                payload["via_mw"] = json!(true);
                payload["user"] = mid.context["user"].clone();
                let mut req: iii_sdk::protocol::TriggerRequestWithMetadata =
                    TriggerRequest::new(mid.function_id, payload).into();
                if let Some(ns) = mid.namespace {
                    req = req.namespace(ns);
                }
                proxy.trigger(req).await
            }
        }),
    );
    let tenant = connect_with(&engine.url(), &unique_name("rs-tenant"), Some("tenant"));
    serve(&tenant, &calls, "t::x", None, served);
    let orders = connect_with(&engine.url(), &unique_name("rs-orders"), Some("orders"));
    serve(&orders, &calls, "svc::x", None, served);
    policy.wait_until_registered(WAIT).await.expect("policy");
    wait_for_function(&policy, "extra::one").await;
    wait_for_function(&policy, "pol::mw").await;
    wait_for_function_in(&policy, "t::x", "tenant").await;
    wait_for_function_in(&policy, "svc::x", "orders").await;
    Setup {
        engine,
        rbac_port,
        mw_port,
        policy,
        calls,
        others: vec![tenant, orders],
    }
}

/// An SDK worker on a gated listener: `ws://127.0.0.1:port/query`.
/// Which gated listener a client connects to.
#[derive(Clone, Copy)]
enum On {
    Rbac,
    Mw,
}

fn gated(
    s: &mut Setup,
    port: On,
    query: &str,
    headers: &[(&str, &str)],
    namespace: Option<&str>,
) -> IIIClient {
    gated_as(s, &unique_name("rs-gated"), port, query, headers, namespace)
}

fn gated_as(
    s: &mut Setup,
    name: &str,
    on: On,
    query: &str,
    headers: &[(&str, &str)],
    namespace: Option<&str>,
) -> IIIClient {
    let port = match on {
        On::Rbac => s.rbac_port,
        On::Mw => s.mw_port,
    };
    let metadata = WorkerMetadata {
        name: name.to_string(),
        ..WorkerMetadata::default()
    };
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = register_worker(
        &format!("ws://127.0.0.1:{port}/{query}"),
        InitOptions {
            metadata: Some(metadata),
            headers: (!headers.is_empty()).then_some(headers),
            namespace: namespace.map(str::to_string),
            ..InitOptions::default()
        },
    );
    s.others.push(c.clone());
    c
}

async fn ready(c: &IIIClient) {
    c.wait_until_registered(WAIT)
        .await
        .expect("gated worker admitted");
}

async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn call_in(c: &IIIClient, fid: &str, payload: Value, ns: &str) -> Result<Value, Error> {
    let mut req = TriggerRequest::new(fid, payload);
    req.timeout_ms = Some(10_000);
    c.trigger(req.namespace(ns)).await
}

/// Asserts `r` is the typed FORBIDDEN error with `message`.
fn assert_forbidden(r: Result<Value, Error>, message: &str) {
    let err = r.expect_err("the call was allowed");
    let inv = err
        .invocation_error()
        .unwrap_or_else(|| panic!("not a remote error: {err:?}"));
    assert_eq!(inv.code, "FORBIDDEN", "{inv:?}");
    assert_eq!(inv.message, message);
    assert_eq!(inv.to_string(), format!("FORBIDDEN: {message}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_admits_by_query_and_header_and_refuses_errors_and_null() {
    let mut s = setup().await;
    let c = gated(
        &mut s,
        On::Rbac,
        "?token=full&x=a%20b",
        &[("X-Custom", "v1")],
        None,
    );
    ready(&c).await;
    let inputs: Vec<Value> = s
        .of("pol::auth")
        .into_iter()
        .filter(|d| d["query_params"]["x"][0] == "a%20b")
        .collect();
    assert_eq!(inputs.len(), 1, "one auth call per admitted connection");
    let last = &inputs[0];
    assert_eq!(
        last["query_params"],
        json!({"token": ["full"], "x": ["a%20b"]})
    );
    assert_eq!(last["headers"]["x-custom"], "v1");
    assert_eq!(last["ip_address"], "127.0.0.1");
    let r = call(&c, "extra::one", json!({})).await.expect("extra::one");
    assert_eq!(r["served"], "extra::one");

    let h = gated(
        &mut s,
        On::Rbac,
        "",
        &[("Authorization", "Bearer from-header")],
        None,
    );
    ready(&h).await;
    let r = call(&h, "extra::one", json!({})).await.expect("extra::one");
    assert_eq!(r["served"], "extra::one");
    assert_forbidden(
        call(&h, "priv::c", json!({})).await,
        "function 'priv::c' not allowed (add to rbac.expose_functions)",
    );

    // Refused: the SDK ignores the AUTH_ERROR frame, sees the close as a drop, reconnects and
    // is refused again; it never gets a worker id and its calls time out.
    let nope = gated(&mut s, On::Rbac, "?token=nope", &[], None);
    let null = gated(&mut s, On::Rbac, "?token=null", &[], None);
    until("two auth attempts per refused token", || async {
        s.auth_attempts("nope") >= 2 && s.auth_attempts("null") >= 2
    })
    .await;
    for c in [&nope, &null] {
        assert!(matches!(
            c.wait_until_registered(Duration::from_millis(200)).await,
            Err(Error::Timeout)
        ));
        let r = call_timeout(c, "link::echo", json!({}), 800).await;
        assert!(matches!(r, Err(Error::Timeout)), "{r:?}");
    }
    let log = s.engine.log();
    assert!(log.contains("connection refused by the listener's auth"));
    assert!(log.contains("unknown token") && log.contains("returned null"));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_follow_match_metadata_namespace_and_grants() {
    let mut s = setup().await;
    let c = gated(&mut s, On::Rbac, "?token=full", &[], None);
    ready(&c).await;
    for (fid, ns) in [
        ("link::echo", "default"), // match("link::*")
        ("pub::a", "default"),     // metadata {public: true}
        ("pro::b", "default"),     // metadata {tier: match("pro*")}
        ("extra::one", "default"), // allowed_functions
        ("t::x", "tenant"),        // namespaces.tenant grant
        ("svc::x", "orders"),      // {match: svc::*, namespace: orders}
    ] {
        let r = call_in(&c, fid, json!({"k": 1}), ns)
            .await
            .unwrap_or_else(|e| panic!("{fid} in {ns}: {e:?}"));
        assert_eq!(r["served"], fid, "{r}");
    }
    let (expose, remove) = (
        "add to rbac.expose_functions",
        "remove from rbac.forbidden_functions",
    );
    for (fid, ns, hint) in [
        ("priv::c", "default", expose),
        ("missing::fn", "default", expose),
        ("pub::secret", "default", remove), // forbidden wins over a metadata rule
        ("engine::log::info", "default", remove), // ... and over the infrastructure carve-out
        ("link::echo", "tenant", expose),   // rules bind to their namespace
        ("svc::x", "default", expose),
    ] {
        assert_forbidden(
            call_in(&c, fid, json!({}), ns).await,
            &format!("function '{fid}' not allowed ({hint})"),
        );
    }
    let r = call(&c, "engine::functions::list", json!({}))
        .await
        .expect("list");
    let ids: HashSet<&str> = r["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["function_id"].as_str().unwrap())
        .collect();
    for id in ["link::echo", "pub::a", "pro::b", "extra::one"] {
        assert!(ids.contains(id), "{id} not listed: {ids:?}");
    }
    for id in ["priv::c", "pub::secret", "pol::auth", "pol::mw"] {
        assert!(!ids.contains(id), "{id} listed: {ids:?}");
    }

    // The namespace a session may declare is bounded by its grants.
    let elsewhere = gated(&mut s, On::Rbac, "?token=full", &[], Some("elsewhere"));
    ready(&elsewhere).await;
    let r = call(
        &elsewhere,
        "engine::workers::register",
        json!({"name": "rs-elsewhere", "namespace": "elsewhere"}),
    )
    .await;
    assert_forbidden(
        r,
        "namespace 'elsewhere' not allowed for this session (permitted: default, tenant)",
    );
    let t = gated(&mut s, On::Rbac, "?token=full", &[], Some("tenant"));
    t.register_function(
        "t::mine",
        RegisterFunction::new_async(|d: Value| async move { Ok(json!({"mine": d["v"]})) }),
    );
    ready(&t).await;
    wait_for_function_in(&s.policy, "t::mine", "tenant").await;
    let r = call_in(&s.policy, "t::mine", json!({"v": 3}), "tenant")
        .await
        .expect("t::mine");
    assert_eq!(r, json!({"mine": 3}));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_functions_work_for_a_session_without_grants() {
    let mut s = setup().await;
    let name = unique_name("rs-bare");
    let c = gated_as(&mut s, &name, On::Rbac, "?token=bare", &[], None);
    ready(&c).await;
    // engine::workers::register (sent by the SDK on connect) succeeded: the name is listed.
    wait_for_worker(&s.policy, &name).await;
    call(
        &c,
        "engine::log::warn",
        json!({"message": "from a bare session"}),
    )
    .await
    .expect("engine::log::warn");
    call(
        &c,
        "engine::log::info",
        json!({"message": "not forbidden here"}),
    )
    .await
    .expect("engine::log::info");
    assert_forbidden(
        call(&c, "priv::c", json!({})).await,
        "function 'priv::c' not allowed (add to rbac.expose_functions)",
    );
    // A handler of the restricted session using the logger, as SDK users do.
    let inner = c.clone();
    c.register_function(
        "bare::fn",
        RegisterFunction::new_async(move |d: Value| {
            let inner = inner.clone();
            async move {
                call(
                    &inner,
                    "engine::log::info",
                    json!({"message": "inside a handler", "data": d}),
                )
                .await?;
                Ok(json!({"logged": true}))
            }
        }),
    );
    wait_for_function(&s.policy, "bare::fn").await;
    let r = call(&s.policy, "bare::fn", json!({"x": 1}))
        .await
        .expect("bare::fn");
    assert_eq!(r, json!({"logged": true}));
    s.stop();
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<Vec<TriggerConfig>>>);

#[async_trait::async_trait]
impl TriggerHandler for Recorder {
    async fn register_trigger(&self, config: TriggerConfig) -> Result<(), Error> {
        self.0.lock().unwrap().push(config);
        Ok(())
    }
    async fn unregister_trigger(&self, _config: TriggerConfig) -> Result<(), Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_hooks_allow_rewrite_and_drop() {
    let mut s = setup().await;
    let c = gated(&mut s, On::Rbac, "?token=types", &[], None);
    let noop = || RegisterFunction::new_async(|_: Value| async move { Ok(json!("ok")) });
    c.register_function(
        "keep::me",
        noop().description("as sent").metadata(json!({"m": 1})),
    );
    for id in ["rename::me", "drop::me", "nullres::me"] {
        c.register_function(id, noop());
    }
    let rec = Recorder::default();
    c.register_trigger_type(RegisterTriggerType::new("mine", "as sent", rec.clone()));
    c.register_trigger_type(RegisterTriggerType::new("bad", "x", Recorder::default()));
    c.register_trigger_type(RegisterTriggerType::new(
        "renameme",
        "x",
        Recorder::default(),
    ));
    for k in ["keep", "rewrite", "drop"] {
        c.register_trigger(RegisterTriggerInput::new(
            "mine",
            "link::echo",
            json!({"k": k}),
        ))
        .expect("register_trigger");
    }
    c.register_trigger(RegisterTriggerInput::new(
        "mine",
        "priv::c",
        json!({"k": "denied-target"}),
    ))
    .expect("register_trigger");
    c.register_trigger(RegisterTriggerInput::new(
        "cron",
        "link::echo",
        json!({"expression": "* * * * * *"}),
    ))
    .expect("register_trigger");
    ready(&c).await;

    // The SDK worker provides `mine`: it is told of the bindings the hook kept, as rewritten.
    until("bindings delivered and hooks called", || async {
        rec.0.lock().unwrap().len() >= 2 && s.of("pol::on_trigger").len() >= 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut ks: Vec<String> = rec
        .0
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.config["k"].as_str().unwrap().to_string())
        .collect();
    ks.sort();
    assert_eq!(ks, ["keep", "rewritten"]);

    let ids = s.trusted_ids().await;
    assert!(
        ids.contains("keep::me") && ids.contains("renamed::me"),
        "{ids:?}"
    );
    for gone in ["rename::me", "drop::me", "nullres::me"] {
        assert!(!ids.contains(gone), "{gone} registered: {ids:?}");
    }
    let info = call(
        &s.policy,
        "engine::functions::info",
        json!({"function_id": "renamed::me"}),
    )
    .await
    .expect("info");
    assert_eq!(info["description"], "set by hook");

    let r = call(&s.policy, "engine::triggers::list", json!({}))
        .await
        .expect("triggers::list");
    let types: HashMap<&str, &Value> = r["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap(), t))
        .collect();
    assert!(
        types.contains_key("mine") && types.contains_key("renamed-type"),
        "{types:?}"
    );
    assert!(!types.contains_key("bad") && !types.contains_key("renameme"));
    assert_eq!(types["mine"]["description"], "checked by hook");

    let r = call(
        &s.policy,
        "engine::registered-triggers::list",
        json!({"include_internal": true}),
    )
    .await
    .expect("registered-triggers::list");
    let bound = r["registered_triggers"].as_array().unwrap();
    let mut mine: Vec<&str> = bound
        .iter()
        .filter(|b| b["trigger_type"] == "mine")
        .map(|b| b["config"]["k"].as_str().unwrap())
        .collect();
    mine.sort();
    assert_eq!(mine, ["keep", "rewritten"]);
    assert!(!bound.iter().any(|b| b["trigger_type"] == "cron"));

    // The hooks saw the §9.6 inputs with the session's context.
    let fn_in = s
        .of("pol::on_fn")
        .into_iter()
        .rfind(|d| d["function_id"] == "keep::me")
        .expect("function hook called");
    assert_eq!(fn_in["description"], "as sent");
    assert_eq!(fn_in["metadata"], json!({"m": 1}));
    assert_eq!(fn_in["namespace"], "default");
    assert_eq!(fn_in["context"], json!({"user": "u-types"}));
    let type_in = s
        .of("pol::on_type")
        .into_iter()
        .rfind(|d| d["trigger_type_id"] == "mine")
        .expect("type hook called");
    assert_eq!(
        type_in,
        json!({"trigger_type_id": "mine", "description": "as sent", "context": {"user": "u-types"}})
    );
    let trig_in = s
        .of("pol::on_trigger")
        .into_iter()
        .rfind(|d| d["config"]["k"] == "keep")
        .expect("trigger hook called");
    assert_eq!(trig_in["trigger_type"], "mine");
    assert_eq!(trig_in["function_id"], "link::echo");
    assert_eq!(trig_in["context"], json!({"user": "u-types"}));
    assert!(
        !s.of("pol::on_trigger")
            .iter()
            .any(|d| d["trigger_type"] == "cron"),
        "allowed_trigger_types is checked before the hook"
    );

    // Without allow_trigger_type_registration a type never reaches the hook.
    let f = gated(&mut s, On::Rbac, "?token=full", &[], None);
    f.register_trigger_type(RegisterTriggerType::new(
        "not-allowed",
        "x",
        Recorder::default(),
    ));
    f.register_function("link::sync", noop());
    ready(&f).await;
    wait_for_function(&s.policy, "link::sync").await;
    let r = call(&s.policy, "engine::triggers::list", json!({}))
        .await
        .expect("triggers::list");
    assert!(!r.to_string().contains("not-allowed"), "{r}");
    assert!(!s
        .of("pol::on_type")
        .iter()
        .any(|d| d["trigger_type_id"] == "not-allowed"));
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_session_registers_p_x_and_serves_x() {
    let mut s = setup().await;
    let c = gated(&mut s, On::Rbac, "?token=prefix", &[], None);
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let log = seen.clone();
    let f = c.register_function(
        "add",
        RegisterFunction::new_async(move |d: Value| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(d.clone());
                Ok(json!({"sum": d["a"].as_i64().unwrap_or(0) + 1}))
            }
        }),
    );
    ready(&c).await;
    wait_for_function(&s.policy, "p1::add").await;
    assert!(!s.trusted_ids().await.contains("add"));
    let r = call(&s.policy, "p1::add", json!({"a": 1}))
        .await
        .expect("p1::add");
    assert_eq!(r, json!({"sum": 2}));
    assert_eq!(seen.lock().unwrap().last().unwrap()["a"], 1);
    f.unregister();
    until("p1::add unregistered", || async {
        !s.trusted_ids().await.contains("p1::add")
    })
    .await;
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_middleware_proxies_rewrites_and_rejects() {
    let mut s = setup().await;
    let c = gated(&mut s, On::Mw, "?token=full", &[], None);
    ready(&c).await;
    let req = TriggerRequest::new("link::echo", json!({"n": 1})).metadata(json!({"trace": "m1"}));
    let mut r = c.trigger(req).await.expect("through the middleware");
    assert_eq!(r["served"], "link::echo");
    take_caller_id(&mut r["data"]);
    assert_eq!(r["data"], json!({"n": 1, "via_mw": true, "user": "u-full"}));
    let (mw_in, mw_meta) = s
        .calls
        .lock()
        .unwrap()
        .iter()
        .rfind(|(f, _, _)| f == "pol::mw")
        .map(|(_, d, m)| (d.clone(), m.clone()))
        .expect("middleware called");
    assert_eq!(
        mw_in,
        json!({"function_id": "link::echo", "payload": {"n": 1}, "action": null,
               "context": {"user": "u-full"}, "namespace": "default"})
    );
    assert_eq!(mw_meta, Some(json!({"trace": "m1"})));

    // A middleware error is the caller's answer, code and all.
    let (code, message, _) = remote_error(call(&c, "link::echo", json!({"reject": true})).await);
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("REJECTED", "middleware said no")
    );

    // A void call goes through the middleware as well.
    let mut void = TriggerRequest::new("link::echo", json!({"mark": "v1"}));
    void.action = Some(TriggerAction::Void);
    c.trigger(void).await.expect("void");
    until("the void call proxied", || async {
        s.of("link::echo").iter().any(|d| d["mark"] == "v1")
    })
    .await;
    let v = s
        .of("pol::mw")
        .into_iter()
        .rfind(|d| d["payload"]["mark"] == "v1")
        .unwrap();
    assert_eq!(v["action"], json!({"type": "void"}));

    // RBAC comes first (the middleware never sees a refused call); engine builtins bypass it.
    let n = s.of("pol::mw").len();
    assert_forbidden(
        call(&c, "priv::c", json!({})).await,
        "function 'priv::c' not allowed (add to rbac.expose_functions)",
    );
    let r = call(&c, "engine::functions::list", json!({}))
        .await
        .expect("list");
    assert!(r["functions"].is_array());
    assert_eq!(s.of("pol::mw").len(), n);
    s.stop();
}
