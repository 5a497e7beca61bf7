//! `publish` and the `subscribe` trigger type (PROTOCOL.md §5.5, §4.6.5) over a [`PubSubBus`].
//! Config entry `pubsub` (`iii-pubsub` is the deprecated name).
//!
//! The service keeps the subscriber bindings of this engine, `topic → {trigger id → target}`;
//! the bus only carries messages. `publish` hands the message to the bus, a poll loop takes
//! what the bus delivers and invokes every subscriber of its topic, each call on its own task
//! (fire-and-forget: no condition, no retry, no persistence). The builtin `local` bus is
//! host-side: for one engine a component would only add a copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use iii_adapter_api::{AdapterSource, AdapterSpec, LocalBus, PubSubBus, PubSubWorld};
use iii_core::config::ConfigError;
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError, TriggerTypeSpec,
};
use iii_protocol::{codes, ErrorBody};
use parking_lot::Mutex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{adapter_spec, err, load_adapter};

/// The pub/sub service.
pub struct PubSub;

/// Which bus the `pubsub` entry chose.
#[derive(Debug, Clone, PartialEq)]
pub enum BusChoice {
    /// The in-process bus (`name: local`, the default).
    Local,
    /// A component of the `iii:pubsub/pubsub-adapter@0.1.0` world.
    Component(AdapterSpec),
    /// The embedded Redis component (`name: redis`), loaded twice (publisher, receiver).
    Redis(AdapterSpec),
}

/// What the `pubsub` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct PubSubConfig {
    /// The bus.
    pub bus: BusChoice,
}

/// Messages taken from the bus per poll, and how long one poll may wait.
const POLL_MAX: u32 = 256;
const POLL_WAIT_MS: u32 = 250;

impl Service for PubSub {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "pubsub",
            worker: "iii-pubsub",
            deprecated_names: &["iii-pubsub"],
            repeatable: false,
            always_on: false,
        }
    }

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        Some(block(
            "iii-pubsub",
            vec![("adapter", field(RESTART, "pub/sub bus (local)", adapter()))],
            false,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut pc = PubSubConfig {
            bus: BusChoice::Local,
        };
        let Some(e) = entries.first() else {
            return Ok(Box::new(pc));
        };
        let at = e.key("config");
        let Some(m) = e.reader.mapping(e.config, &at)? else {
            return Ok(Box::new(pc));
        };
        e.reader.check_keys(m, &at, &["adapter"])?;
        if m.get("adapter").is_some_and(|a| !a.is_null()) {
            let spec = adapter_spec(e, m)?;
            pc.bus = match &spec.source {
                AdapterSource::Name(n) if n == "local" => BusChoice::Local,
                AdapterSource::Name(n) if n == "redis" => BusChoice::Redis(spec),
                AdapterSource::Name(n) => {
                    return Err(e.reader.error(format!(
                        "`{at}.adapter`: unknown pub/sub adapter `{n}`; use `name: local`, or `path:` to a component of the {} world",
                        <PubSubWorld as iii_adapter_api::AdapterWorld>::WORLD
                    )))
                }
                AdapterSource::Path(_) => BusChoice::Component(spec),
            };
        }
        Ok(Box::new(pc))
    }
}

#[async_trait::async_trait]
impl Configured for PubSubConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let bus: Arc<dyn PubSubBus> = match &self.bus {
            BusChoice::Local => {
                tracing::info!(adapter = "local", "pubsub service ready");
                Arc::new(LocalBus::default())
            }
            BusChoice::Component(spec) => load_adapter::<PubSubWorld>(cx, "pubsub", spec).await?.0,
            BusChoice::Redis(spec) => {
                let spec = crate::common::redis_spec("pubsub", spec)?;
                crate::common::load_split_bus(cx, "pubsub", &spec).await?
            }
        };
        Ok(Box::new(PubSubService::new(bus)))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Where a subscriber binding sends a message.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    namespace: String,
    function_id: String,
}

/// A change of the topics this engine needs from the bus, applied in order by the run task.
enum BusCommand {
    Subscribe(String),
    Unsubscribe(String),
}

/// The ordered command channel to the run task, with counts of commands sent and applied, so
/// `publish` can wait until every subscription registered before it reached the bus.
#[derive(Clone)]
struct Commands {
    tx: mpsc::UnboundedSender<BusCommand>,
    sent: Arc<std::sync::atomic::AtomicU64>,
    applied: tokio::sync::watch::Sender<u64>,
}

impl Commands {
    fn send(&self, c: BusCommand) {
        if self.tx.send(c).is_ok() {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// Waits (at most `limit`) until the commands sent so far are applied.
    async fn caught_up(&self, limit: std::time::Duration) {
        let target = self.sent.load(std::sync::atomic::Ordering::SeqCst);
        let mut rx = self.applied.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n >= target)).await;
    }
}

/// The subscriber bindings of this engine.
#[derive(Default)]
struct Subscribers {
    by_topic: HashMap<String, BTreeMap<String, Target>>,
    topic_of: HashMap<String, String>,
}

impl Subscribers {
    /// Removes binding `id`; returns its topic when that topic has no subscriber left.
    fn remove(&mut self, id: &str) -> Option<String> {
        let topic = self.topic_of.remove(id)?;
        let subs = self.by_topic.get_mut(&topic)?;
        subs.remove(id);
        if subs.is_empty() {
            self.by_topic.remove(&topic);
            return Some(topic);
        }
        None
    }

    fn targets(&self, topic: &str) -> Vec<Target> {
        self.by_topic
            .get(topic)
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The `subscribe` trigger type: arming records the binding and asks the bus for its topic.
struct SubscribeType {
    subs: Arc<Mutex<Subscribers>>,
    commands: Commands,
}

impl BuiltinTriggerType for SubscribeType {
    fn register(&self, b: &Binding) -> Result<(), String> {
        let topic = match &b.config {
            Value::Null => "",
            Value::Object(m) => match m.get("topic") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err("`topic` must be a string".into()),
            },
            _ => return Err("trigger config must be an object".into()),
        };
        let mut subs = self.subs.lock();
        if subs.topic_of.get(&b.id).map(String::as_str) != Some(topic) {
            if let Some(gone) = subs.remove(&b.id) {
                self.commands.send(BusCommand::Unsubscribe(gone));
            }
        }
        // An empty topic is accepted and inert (§4.6.5): nothing can publish to it.
        if topic.is_empty() {
            return Ok(());
        }
        let target = Target {
            namespace: b.namespace.clone(),
            function_id: b.function_id.clone(),
        };
        subs.topic_of.insert(b.id.clone(), topic.to_string());
        let topic_subs = subs.by_topic.entry(topic.to_string()).or_default();
        let first = topic_subs.is_empty();
        topic_subs.insert(b.id.clone(), target);
        if first {
            self.commands.send(BusCommand::Subscribe(topic.to_string()));
        }
        Ok(())
    }

    fn unregister(&self, b: &Binding) {
        // Only this binding goes; the topic's other subscribers stay (upstream dropped them all).
        if let Some(gone) = self.subs.lock().remove(&b.id) {
            self.commands.send(BusCommand::Unsubscribe(gone));
        }
    }
}

/// The prepared service: the bus and this engine's subscribers.
pub struct PubSubService {
    bus: Arc<dyn PubSubBus>,
    subs: Arc<Mutex<Subscribers>>,
    commands: Commands,
    pending: Option<mpsc::UnboundedReceiver<BusCommand>>,
}

impl PubSubService {
    /// A service over `bus`.
    pub fn new(bus: Arc<dyn PubSubBus>) -> Self {
        let (tx, pending) = mpsc::unbounded_channel();
        PubSubService {
            bus,
            subs: Arc::default(),
            commands: Commands {
                tx,
                sent: Arc::default(),
                applied: tokio::sync::watch::Sender::new(0),
            },
            pending: Some(pending),
        }
    }
}

#[derive(Deserialize, JsonSchema)]
struct PublishIn {
    /// The topic; required and non-empty.
    topic: Option<String>,
    /// The payload every subscriber receives.
    #[serde(default)]
    data: Value,
}

impl Prepared for PubSubService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        reg.trigger_type(TriggerTypeSpec {
            id: "subscribe".into(),
            description: "Runs for every message published on its topic".into(),
            config_schema: Some(json!({"type": "object", "properties": {
                "topic": {"type": "string", "description": "the topic; empty = the binding is inert"}}})),
            request_schema: Some(json!({"description": "the published data, as is"})),
            response_schema: None,
            provider: Arc::new(SubscribeType {
                subs: self.subs.clone(),
                commands: self.commands.clone(),
            }),
        });
        let bus = self.bus.clone();
        let commands = self.commands.clone();
        reg.function(
            FunctionSpec::typed(
                "publish",
                "Publish data to every subscriber of a topic (fire-and-forget)",
                move |_core, _ctx, i: PublishIn| {
                    let (bus, commands) = (bus.clone(), commands.clone());
                    async move {
                        let topic = i.topic.filter(|t| !t.is_empty()).ok_or_else(|| {
                            ErrorBody::new(
                                codes::TOPIC_NOT_SET,
                                "Topic is not set: `topic` is required",
                            )
                        })?;
                        // A subscription registered before this publish must see it.
                        commands.caught_up(std::time::Duration::from_secs(5)).await;
                        bus.publish(&topic, &i.data)
                            .await
                            .map_err(|e| err(codes::PUBLISH_FAILED, e))?;
                        Ok(Value::Null)
                    }
                },
            )
            .returns(json!({"type": "null"})),
        );
    }

    fn run(mut self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let mut pending = self.pending.take()?;
        let bus = self.bus.clone();
        let subs = self.subs.clone();
        let applied = self.commands.applied.clone();
        Some(Box::pin(async move {
            // Topic changes go to the bus in the order bindings came and went.
            let commands = {
                let bus = bus.clone();
                tokio::spawn(async move {
                    while let Some(c) = pending.recv().await {
                        let (what, topic, r) = match c {
                            BusCommand::Subscribe(t) => {
                                ("subscribe", t.clone(), bus.subscribe(&t).await)
                            }
                            BusCommand::Unsubscribe(t) => {
                                ("unsubscribe", t.clone(), bus.unsubscribe(&t).await)
                            }
                        };
                        if let Err(e) = r {
                            tracing::warn!(topic = %topic, error = %e, "pub/sub adapter {what} failed");
                        }
                        applied.send_modify(|n| *n += 1);
                    }
                })
            };
            loop {
                let got = tokio::select! {
                    _ = stop.cancelled() => break,
                    got = bus.poll(POLL_MAX, POLL_WAIT_MS) => got,
                };
                match got {
                    Ok(messages) => {
                        for m in messages {
                            let data = m.data.to_string();
                            let targets = subs.lock().targets(&m.topic);
                            for t in targets {
                                core.call_void(t.namespace, t.function_id, data.clone(), None);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "pub/sub adapter poll failed; retrying in 1 s");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
            commands.abort();
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_core::testing::TestCore;
    use std::time::Duration;

    async fn pubsub_core(config: &str) -> TestCore {
        let mut t = TestCore::new();
        t.start(&PubSub, config).await.unwrap();
        t
    }

    fn binding(id: &str, function_id: &str, config: Value) -> Binding {
        Binding {
            id: id.into(),
            trigger_type: "subscribe".into(),
            function_id: function_id.into(),
            config,
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        }
    }

    fn bind(t: &TestCore, id: &str, function_id: &str, config: Value) {
        t.core
            .triggers()
            .upsert(binding(id, function_id, config), &mut Vec::new())
            .unwrap();
    }

    /// Publishes, then waits until `log` holds `n` entries (and a little more, to catch extras).
    async fn settle(log: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
        let got = TestCore::wait_for(log, n, 3000).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            got.len(),
            log.lock().len(),
            "more calls arrived than expected"
        );
        got
    }

    #[tokio::test]
    async fn publish_reaches_every_subscriber_of_the_topic_and_no_other() {
        let t = pubsub_core("").await;
        let a = t.recorder("orders::a", Value::Null);
        let b = t.recorder("orders::b", Value::Null);
        let other = t.recorder("other::c", Value::Null);
        bind(&t, "s-a", "orders::a", json!({"topic": "orders"}));
        bind(&t, "s-b", "orders::b", json!({"topic": "orders"}));
        bind(&t, "s-c", "other::c", json!({"topic": "invoices"}));
        let r = t
            .call("publish", json!({"topic": "orders", "data": {"id": 7}}))
            .await
            .unwrap();
        assert_eq!(r, Value::Null);
        assert_eq!(settle(&a, 1).await, [json!({"id": 7})]);
        assert_eq!(settle(&b, 1).await, [json!({"id": 7})]);
        assert!(other.lock().is_empty());
    }

    #[tokio::test]
    async fn unsubscribing_one_binding_leaves_the_others() {
        let t = pubsub_core("{adapter: {name: local}}").await;
        let a = t.recorder("orders::a", Value::Null);
        let b = t.recorder("orders::b", Value::Null);
        bind(&t, "s-a", "orders::a", json!({"topic": "orders"}));
        bind(&t, "s-b", "orders::b", json!({"topic": "orders"}));
        let _ = t.core.triggers().unregister("s-a");
        t.call("publish", json!({"topic": "orders", "data": 1}))
            .await
            .unwrap();
        assert_eq!(settle(&b, 1).await, [json!(1)]);
        assert!(a.lock().is_empty());
        // Moving a binding to another topic takes it off the first.
        bind(&t, "s-b", "orders::b", json!({"topic": "invoices"}));
        t.call("publish", json!({"topic": "orders", "data": 2}))
            .await
            .unwrap();
        t.call("publish", json!({"topic": "invoices", "data": 3}))
            .await
            .unwrap();
        assert_eq!(settle(&b, 2).await, [json!(1), json!(3)]);
    }

    #[tokio::test]
    async fn a_missing_topic_is_refused_and_an_empty_binding_is_inert() {
        let t = pubsub_core("").await;
        let e = t.call("publish", json!({"data": 1})).await.unwrap_err();
        assert_eq!(e.code, "topic_not_set");
        let e = t
            .call("publish", json!({"topic": "", "data": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.code, "topic_not_set");
        let inert = t.recorder("inert::f", Value::Null);
        bind(&t, "s-i", "inert::f", json!({"topic": ""}));
        bind(&t, "s-j", "inert::f", json!({}));
        t.call("publish", json!({"topic": "x", "data": 1}))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(inert.lock().is_empty());
        let bad = t
            .core
            .triggers()
            .upsert(
                binding("s-k", "inert::f", json!({"topic": 5})),
                &mut Vec::new(),
            )
            .unwrap_err();
        assert!(bad.message.contains("`topic` must be a string"), "{bad}");
    }

    #[test]
    fn adapter_choices_are_checked_at_configure() {
        let mut t = TestCore::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(t.start(
                &PubSub,
                "{adapter: {name: redis, config: {redis_url: 'redis://127.0.0.1:1'}, grants: {network: ['127.0.0.1:2']}}}",
            ))
            .unwrap_err();
        assert!(
            e.contains("grants.network") && e.contains("127.0.0.1:1"),
            "{e}"
        );
        let e = rt
            .block_on(t.start(&PubSub, "{adapter: {name: rabbit}}"))
            .unwrap_err();
        assert!(e.contains("unknown pub/sub adapter `rabbit`"), "{e}");
        let e = rt.block_on(t.start(&PubSub, "{adapters: {}}")).unwrap_err();
        assert!(e.contains("adapters"), "{e}");
    }
}
