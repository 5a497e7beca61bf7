//! `state::*` functions and the `state` trigger type (PROTOCOL.md §5.3, §4.6.3) over a
//! [`StateStore`] adapter. Config entry `state` (`iii-state` is the deprecated name).

use iii_protocol::codes;
use std::sync::Arc;

use iii_adapter_api::{AdapterSpec, StateStore, StateWorld, UpdateOp};
use iii_core::config::ConfigError;
use iii_core::{
    Configured, Core, Entry, LiveConfig, NoInput, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError, TriggerTypeSpec,
};
use iii_protocol::ErrorBody;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::common::{
    adapter_spec, err, filter_eq, function, load_adapter, redis_relay, redis_spec, EventRelay,
    RelayTask, ServiceTriggerType,
};

/// The state service.
pub struct State;

/// What the `state` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    /// The `adapter:` entry; the builtin kv when absent.
    pub adapter: AdapterSpec,
    /// Fire `state` triggers after writes.
    pub triggers_enabled: bool,
    /// Refuse values whose JSON is larger than this.
    pub max_value_bytes: Option<usize>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            adapter: AdapterSpec::named("kv"),
            triggers_enabled: true,
            max_value_bytes: None,
        }
    }
}

impl Service for State {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "state",
            worker: "iii-state",
            deprecated_names: &["iii-state"],
            repeatable: false,
            always_on: false,
        }
    }

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        Some(block(
            "iii-state",
            vec![
                ("adapter", field(RESTART, "state adapter (kv)", adapter())),
                (
                    "triggers_enabled",
                    field(
                        LIVE,
                        "fire state triggers (true)",
                        json!({"type": "boolean"}),
                    ),
                ),
                (
                    "max_value_bytes",
                    field(LIVE, "largest value, as JSON", uint(1, None)),
                ),
                (
                    "save_interval_ms",
                    field(
                        LIVE,
                        "accepted for upstream compatibility; every write is durable",
                        uint(100, Some(3_600_000)),
                    ),
                ),
            ],
            false,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut sc = StateConfig::default();
        let Some(e) = entries.first() else {
            return Ok(Box::new(sc));
        };
        let at = e.key("config");
        let r = &e.reader;
        let Some(m) = r.mapping(e.config, &at)? else {
            return Ok(Box::new(sc));
        };
        r.check_keys(
            m,
            &at,
            &[
                "adapter",
                "triggers_enabled",
                "max_value_bytes",
                "save_interval_ms",
            ],
        )?;
        sc.adapter = adapter_spec(e, m)?;
        if let Some(t) = m.get("triggers_enabled") {
            sc.triggers_enabled = r.bool(t, &format!("{at}.triggers_enabled"))?;
        }
        if let Some(x) = m.get("max_value_bytes") {
            let n = r.u64(x, &format!("{at}.max_value_bytes"))?;
            if n == 0 {
                return Err(r.invalid(
                    &format!("{at}.max_value_bytes"),
                    "an integer of at least 1",
                    x,
                ));
            }
            sc.max_value_bytes = Some(usize::try_from(n).unwrap_or(usize::MAX));
        }
        // Upstream's file adapter snapshots on this interval; every write here is durable
        // before it is acknowledged, so the value is only checked.
        if let Some(x) = m.get("save_interval_ms") {
            let n = r.u64(x, &format!("{at}.save_interval_ms"))?;
            if !(100..=3_600_000).contains(&n) {
                return Err(r.invalid(
                    &format!("{at}.save_interval_ms"),
                    "between 100 and 3600000",
                    x,
                ));
            }
        }
        Ok(Box::new(sc))
    }
}

#[async_trait::async_trait]
impl Configured for StateConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        if let Some((remote, client)) = crate::bridge::state_store("state", &self.adapter)? {
            let mut svc = StateService::new(remote, *self);
            svc.bridged = Some(client);
            return Ok(Box::new(svc));
        }
        let spec = redis_spec("state", &self.adapter)?;
        let (store, _) = load_adapter::<StateWorld>(cx, "state", &spec).await?;
        let relay = redis_relay(cx, "state", &spec, "state::events").await?;
        let mut svc = StateService::new(store, *self);
        if let Some((relay, task)) = relay {
            svc.relay = Some(relay);
            svc.relay_task = Arc::new(parking_lot::Mutex::new(Some(task)));
        }
        Ok(Box::new(svc))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service: its store and options, shared by its functions.
#[derive(Clone)]
pub struct StateService {
    store: Arc<dyn StateStore>,
    /// The live-tier options (`triggers_enabled`, `max_value_bytes`), changed in place by a
    /// run-time configuration change.
    opts: Arc<parking_lot::RwLock<StateConfig>>,
    /// With a shared backend (redis): carries change events to the other engines.
    relay: Option<Arc<EventRelay>>,
    relay_task: Arc<parking_lot::Mutex<Option<RelayTask>>>,
    /// With the bridge adapter: the remote engine fires the change events of every write
    /// (made here or there) and relays them over this client, so this service fires none.
    bridged: Option<iii_engine_client::Client>,
}

impl StateService {
    /// A service over `store` (for tests: a memory store).
    pub fn new(store: Arc<dyn StateStore>, opts: StateConfig) -> Self {
        StateService {
            store,
            opts: Arc::new(parking_lot::RwLock::new(opts)),
            relay: None,
            relay_task: Arc::default(),
            bridged: None,
        }
    }

    fn triggers_enabled(&self) -> bool {
        self.opts.read().triggers_enabled
    }

    fn max_value_bytes(&self) -> Option<usize> {
        self.opts.read().max_value_bytes
    }
}

/// Applies `triggers_enabled` and `max_value_bytes` to the running service.
struct LiveState(Arc<parking_lot::RwLock<StateConfig>>);

impl LiveConfig for LiveState {
    fn apply_live(&self, next: &dyn Configured) -> Result<(), String> {
        let Some(next) = next.as_any().downcast_ref::<StateConfig>() else {
            return Err("not a state configuration".into());
        };
        let mut cur = self.0.write();
        cur.triggers_enabled = next.triggers_enabled;
        cur.max_value_bytes = next.max_value_bytes;
        Ok(())
    }
}

#[derive(Deserialize, JsonSchema)]
struct ScopeKey {
    scope: String,
    key: String,
}

#[derive(Deserialize, JsonSchema)]
struct SetIn {
    scope: String,
    key: String,
    value: Option<Value>,
    /// Accepted as an alias of `value`.
    data: Option<Value>,
}

#[derive(Deserialize, JsonSchema)]
struct UpdateIn {
    scope: String,
    key: String,
    /// Update ops, applied in order: `{"type": "set"|"merge"|"increment"|"decrement"|"append"|"remove", "path", ...}`.
    ops: Value,
}

#[derive(Deserialize, JsonSchema)]
struct ScopeIn {
    scope: String,
}

const OLD_NEW: &str = "old_value/new_value";

fn old_new_schema() -> Value {
    json!({"type": "object", "description": OLD_NEW, "properties": {"old_value": {}, "new_value": {}}})
}

/// Fires `state` triggers after a successful write, on a background task (§4.6.3).
fn emit(
    core: &Core,
    svc: &StateService,
    scope: &str,
    key: &str,
    old: Option<Value>,
    new: Option<Value>,
) {
    if !svc.triggers_enabled() || svc.bridged.is_some() {
        return;
    }
    let event = match (&old, &new) {
        (_, None) => "state:deleted",
        (None, Some(_)) => "state:created",
        (Some(_), Some(_)) => "state:updated",
    };
    let payload = json!({"type": "state", "event_type": event, "scope": scope, "key": key,
        "old_value": old.unwrap_or(Value::Null), "new_value": new.unwrap_or(Value::Null)});
    if let Some(r) = &svc.relay {
        r.send(&payload);
    }
    fire(core, payload);
}

/// Fires the `state` triggers of this engine matching the event's scope and key.
fn fire(core: &Core, payload: Value) {
    let scope = payload["scope"].as_str().unwrap_or_default().to_string();
    let key = payload["key"].as_str().unwrap_or_default().to_string();
    core.fire("state", payload, move |cfg| {
        filter_eq(cfg, "scope", &scope) && filter_eq(cfg, "key", &key)
    });
}

impl Prepared for StateService {
    fn run(
        self: Box<Self>,
        core: Core,
        stop: iii_core::CancellationToken,
    ) -> Option<iii_core::BoxFut<()>> {
        if let Some(client) = &self.bridged {
            let enabled = self.opts.clone();
            let core = core.clone();
            crate::bridge::relay_events(client, "state", move |ev| {
                if enabled.read().triggers_enabled {
                    fire(&core, ev);
                }
            });
        }
        let task = self.relay_task.lock().take()?;
        let enabled = self.opts.clone();
        Some(Box::pin(task.run(stop, move |ev| {
            if enabled.read().triggers_enabled {
                fire(&core, ev);
            }
        })))
    }

    fn live(&self) -> Option<Arc<dyn LiveConfig>> {
        Some(Arc::new(LiveState(self.opts.clone())))
    }

    fn install(&mut self, reg: &mut Registrar<'_>) {
        let tt = ServiceTriggerType {
            string_keys: &["scope", "key", "condition_function_id"],
            required: &[],
        };
        reg.trigger_type(TriggerTypeSpec {
            id: "state".into(),
            description: "Fires after state::set, state::update and state::delete".into(),
            config_schema: Some(tt.config_schema()),
            request_schema: Some(json!({"type": "object", "properties": {
                "type": {"const": "state"},
                "event_type": {"enum": ["state:created", "state:updated", "state:deleted"]},
                "scope": {"type": "string"}, "key": {"type": "string"},
                "old_value": {}, "new_value": {}}})),
            response_schema: None,
            provider: Arc::new(tt),
        });
        let svc = self.clone();
        reg.function(
            function(
                &svc,
                "state::set",
                "Store a value under scope/key",
                |e, i: SetIn, svc| async move {
                    let value = i.value.or(i.data).unwrap_or(Value::Null);
                    if let Some(max) = svc.max_value_bytes() {
                        let len = value.to_string().len();
                        if len > max {
                            return Err(ErrorBody::new(
                                codes::VALUE_TOO_LARGE,
                                format!("value is {len} bytes of JSON; max_value_bytes is {max}"),
                            ));
                        }
                    }
                    let r = svc
                        .store
                        .set(&i.scope, &i.key, &value)
                        .await
                        .map_err(|e| err(codes::SET_ERROR, e))?;
                    emit(
                        &e,
                        &svc,
                        &i.scope,
                        &i.key,
                        r.old_value.clone(),
                        Some(r.new_value.clone()),
                    );
                    Ok(json!({"old_value": r.old_value, "new_value": r.new_value}))
                },
            )
            .returns(old_new_schema()),
        );
        reg.function(
            function(
                &svc,
                "state::get",
                "Read the value under scope/key",
                |_e, i: ScopeKey, svc| async move {
                    Ok(svc
                        .store
                        .get(&i.scope, &i.key)
                        .await
                        .map_err(|e| err(codes::GET_ERROR, e))?
                        .unwrap_or(Value::Null))
                },
            )
            .returns(json!({"description": "the stored value, or null when absent"})),
        );
        reg.function(
            function(
                &svc,
                "state::delete",
                "Remove the value under scope/key",
                |e, i: ScopeKey, svc| async move {
                    let old = svc
                        .store
                        .delete(&i.scope, &i.key)
                        .await
                        .map_err(|e| err(codes::DELETE_ERROR, e))?;
                    if old.is_some() {
                        emit(&e, &svc, &i.scope, &i.key, old.clone(), None);
                    }
                    Ok(old.unwrap_or(Value::Null))
                },
            )
            .returns(json!({"description": "the removed value, or null when absent"})),
        );
        reg.function(
            function(
                &svc,
                "state::update",
                "Apply update ops to the value under scope/key",
                |e, i: UpdateIn, svc| async move {
                    let ops = UpdateOp::parse_list(&i.ops)
                        .map_err(|e| err(codes::UPDATE_ERROR, format!("invalid ops: {e}")))?;
                    let r = svc
                        .store
                        .update(&i.scope, &i.key, &ops)
                        .await
                        .map_err(|e| err(codes::UPDATE_ERROR, e))?;
                    emit(
                        &e,
                        &svc,
                        &i.scope,
                        &i.key,
                        r.old_value.clone(),
                        Some(r.new_value.clone()),
                    );
                    serde_json::to_value(&r).map_err(|e| err(codes::SERIALIZATION_ERROR, e))
                },
            )
            .returns(
                json!({"type": "object", "properties": {"old_value": {}, "new_value": {},
                "errors": {"type": "array", "items": {"type": "object"}}}}),
            ),
        );
        reg.function(
            function(
                &svc,
                "state::list",
                "All values of a scope, in insertion order",
                |_e, i: ScopeIn, svc| async move {
                    Ok(Value::Array(
                        svc.store
                            .list(&i.scope)
                            .await
                            .map_err(|e| err(codes::LIST_ERROR, e))?,
                    ))
                },
            )
            .returns(json!({"type": "array"})),
        );
        reg.function(
            function(&svc, "state::list_groups", "All scopes, sorted", |_e, _i: NoInput, svc| async move {
                let g = svc
                    .store
                    .list_groups()
                    .await
                    .map_err(|e| err(codes::LIST_GROUPS_ERROR, e))?;
                Ok(json!({ "groups": g }))
            })
            .returns(json!({"type": "object", "properties": {"groups": {"type": "array", "items": {"type": "string"}}}})),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_adapter_api::memory::MemoryLoader;
    use iii_adapter_api::AdapterLoader;
    use iii_core::testing::TestCore;
    use iii_core::triggers::Binding;

    async fn state_core(config: &str) -> TestCore {
        let mut t = TestCore::new();
        let loader: Arc<dyn AdapterLoader> = Arc::new(MemoryLoader);
        t.handles.insert(loader);
        t.start(&State, config).await.unwrap();
        t
    }

    fn bind(t: &TestCore, function_id: &str, config: Value) {
        let b = Binding {
            id: format!("b-{function_id}"),
            trigger_type: "state".into(),
            function_id: function_id.into(),
            config,
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        };
        let mut sends = Vec::new();
        t.core.triggers().upsert(b, &mut sends).unwrap();
        assert!(sends.is_empty(), "a service type sends no frames");
    }

    #[tokio::test]
    async fn set_get_update_delete_list() {
        let t = state_core("").await;
        let r = t
            .call(
                "state::set",
                json!({"scope": "s", "key": "k", "value": {"n": 1}}),
            )
            .await
            .unwrap();
        assert_eq!(r, json!({"old_value": null, "new_value": {"n": 1}}));
        let ops = json!([{"type": "increment", "path": "n", "by": 4}]);
        let u = t
            .call(
                "state::update",
                json!({"scope": "s", "key": "k", "ops": ops}),
            )
            .await
            .unwrap();
        assert_eq!(u["new_value"], json!({"n": 5}));
        assert_eq!(
            t.call("state::get", json!({"scope": "s", "key": "k"}))
                .await
                .unwrap(),
            json!({"n": 5})
        );
        assert_eq!(
            t.call("state::list", json!({"scope": "s"})).await.unwrap(),
            json!([{"n": 5}])
        );
        assert_eq!(
            t.call("state::list_groups", Value::Null).await.unwrap(),
            json!({"groups": ["s"]})
        );
        assert_eq!(
            t.call("state::delete", json!({"scope": "s", "key": "k"}))
                .await
                .unwrap(),
            json!({"n": 5})
        );
        assert_eq!(
            t.call("state::get", json!({"scope": "s", "key": "k"}))
                .await
                .unwrap(),
            Value::Null
        );
    }

    #[tokio::test]
    async fn bad_input_and_oversized_values_are_refused() {
        let t = state_core("{max_value_bytes: 16}").await;
        let e = t
            .call("state::set", json!({"scope": "s"}))
            .await
            .unwrap_err();
        assert_eq!(e.code, "deserialization_error");
        assert!(e.message.contains("state::set"), "{e}");
        let e = t
            .call(
                "state::set",
                json!({"scope": "s", "key": "k", "value": "x".repeat(64)}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "VALUE_TOO_LARGE");
        let e = t
            .call(
                "state::update",
                json!({"scope": "s", "key": "k", "ops": [{"type": "explode"}]}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, "UPDATE_ERROR");
    }

    #[tokio::test]
    async fn writes_fire_matching_state_triggers() {
        let t = state_core("").await;
        let all = t.recorder("audit::all", Value::Null);
        let only_b = t.recorder("audit::b", Value::Null);
        bind(&t, "audit::all", json!({"scope": "s"}));
        bind(&t, "audit::b", json!({"scope": "s", "key": "b"}));
        t.call("state::set", json!({"scope": "s", "key": "a", "value": 1}))
            .await
            .unwrap();
        t.call("state::set", json!({"scope": "s", "key": "a", "value": 2}))
            .await
            .unwrap();
        t.call("state::delete", json!({"scope": "s", "key": "a"}))
            .await
            .unwrap();
        t.call(
            "state::set",
            json!({"scope": "other", "key": "a", "value": 1}),
        )
        .await
        .unwrap();
        let got = TestCore::wait_for(&all, 3, 2000).await;
        let events: Vec<&str> = got
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect();
        assert_eq!(events, ["state:created", "state:updated", "state:deleted"]);
        assert_eq!(got[1]["old_value"], json!(1));
        assert!(only_b.lock().is_empty());
    }

    #[tokio::test]
    async fn triggers_can_be_disabled_and_bad_bindings_refused() {
        let t = state_core("{triggers_enabled: false}").await;
        let all = t.recorder("audit::all", Value::Null);
        bind(&t, "audit::all", json!({}));
        t.call("state::set", json!({"scope": "s", "key": "a", "value": 1}))
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(all.lock().is_empty());
        let b = Binding {
            id: "bad".into(),
            trigger_type: "state".into(),
            function_id: "audit::all".into(),
            config: json!({"scope": 3}),
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        };
        let e = t.core.triggers().upsert(b, &mut Vec::new()).unwrap_err();
        assert!(e.message.contains("`scope` must be a string"), "{e}");
    }

    #[tokio::test]
    async fn functions_carry_schemas_and_the_worker_name() {
        let t = state_core("").await;
        let f = t.core.lookup("default", "state::set").unwrap();
        assert_eq!(f.worker_name(), "iii-state");
        let req = f.request_format.as_ref().unwrap();
        assert!(req["properties"]["scope"].is_object(), "{req}");
        assert!(f.response_format.is_some());
        assert!(t.core.in_process_workers().contains(&"iii-state"));
    }
}
