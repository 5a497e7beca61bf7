//! Durable queues (PROTOCOL.md §4.6.6, §5.5, §8.4, §3.4): `iii::durable::publish` with the
//! `durable:subscriber` trigger type, named queues behind `TriggerAction.Enqueue`
//! (`engine::queue::enqueue`), and dead-letter management, over a [`QueueStore`] adapter
//! (default: the builtin durable queue component). Config entry `queue` (`iii-queue` is the
//! deprecated name).
//!
//! Delivery is at least once: a message is deleted only when its handler answered, a failed
//! attempt is retried with backoff and dead-lettered after the last one, and whatever was in
//! flight when the engine stopped is handed out again after a restart.

mod config;
mod consumer;
mod names;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use iii_adapter_api::queue::NewMessage;
use iii_adapter_api::{AdapterSource, AdapterSpec, QueueStore, QueueWorld};
use iii_core::config::ConfigError;
use iii_core::CancellationToken;
use iii_core::{
    BoxFut, Configured, Core, Entry, NoInput, PrepareCx, Prepared, Registrar, Service, ServiceInfo,
    StartError, TriggerTypeSpec,
};
use iii_protocol::{codes, ErrorBody};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

pub use config::QueueConfig;
use consumer::{Shared, SubscriberType};
use names::QueueName;

use crate::common::{err, function, load_adapter, network_adapter_spec};

/// The embedded component `adapter: {name: builtin}` loads.
const BUILTIN_COMPONENT: &str = "queue";

/// The embedded RabbitMQ adapter (`plugins/rabbitmq`), `adapter: {name: rabbitmq}`.
const RABBITMQ_COMPONENT: &str = "rabbitmq";

/// The broker `name: rabbitmq` connects to without `config.amqp_url`.
const DEFAULT_AMQP_URL: &str = "amqp://localhost:5672";

/// The queue service.
pub struct Queue;

impl Service for Queue {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "queue",
            worker: "iii-queue",
            deprecated_names: &["iii-queue"],
            repeatable: false,
            always_on: false,
        }
    }

    fn config_schema(&self) -> Option<serde_json::Value> {
        use crate::config_schema::*;
        let queue = serde_json::json!({
            "type": ["object", "null"],
            "additionalProperties": false,
            "properties": {
                "max_retries": uint(1, None),
                "concurrency": uint(1, None),
                "type": {"enum": ["standard", "concurrent", "fifo"]},
                "message_group_field": {"type": ["string", "null"]},
                "backoff_ms": uint(0, None),
                "poll_interval_ms": uint(0, None),
                "max_priority": uint(1, Some(255)),
                "priority_field": {},
                "lease_ms": uint(0, None)
            }
        });
        Some(block(
            "iii-queue",
            vec![
                (
                    "adapter",
                    field(
                        RESTART,
                        "queue adapter (builtin, rabbitmq, bridge)",
                        adapter(),
                    ),
                ),
                (
                    "queue_configs",
                    field(
                        REBIND,
                        "named queues and their retry, concurrency and ordering",
                        serde_json::json!({"type": ["object", "null"], "additionalProperties": queue}),
                    ),
                ),
            ],
            false,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        match entries.first() {
            Some(e) => Ok(Box::new(config::configure(e)?)),
            None => Ok(Box::new(QueueConfig::default())),
        }
    }
}

#[async_trait::async_trait]
impl Configured for QueueConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let mut remote = None;
        let spec = if crate::bridge::is_bridge(&self.adapter) {
            // Publishes go to the remote engine (spec section 8.4); named queues and this
            // engine's own subscriptions keep a local builtin store.
            remote = Some(crate::bridge::Remote::start("queue", &self.adapter)?);
            AdapterSpec::named(BUILTIN_COMPONENT)
        } else if matches!(&self.adapter.source, AdapterSource::Name(n) if n == RABBITMQ_COMPONENT)
        {
            network_adapter_spec(&self.adapter, "amqp_url", DEFAULT_AMQP_URL).map_err(
                |message| StartError::Service {
                    service: "queue",
                    message,
                },
            )?
        } else {
            self.adapter.clone()
        };
        let (store, _) = load_adapter::<QueueWorld>(cx, "queue", &spec).await?;
        let mut svc = QueueService::new(store, *self);
        svc.remote = remote;
        Ok(Box::new(svc))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service.
pub struct QueueService {
    shared: Arc<Shared>,
    /// With the bridge adapter: the engine `iii::durable::publish` is forwarded to.
    remote: Option<crate::bridge::Remote>,
}

impl QueueService {
    /// A service over `store` (for tests: a memory store).
    pub fn new(store: Arc<dyn QueueStore>, cfg: QueueConfig) -> Self {
        QueueService {
            shared: Shared::new(store, cfg),
            remote: None,
        }
    }
}

#[derive(Deserialize, JsonSchema)]
struct PublishIn {
    /// The topic; every `durable:subscriber` of it gets a durable copy.
    topic: Option<String>,
    /// The payload each subscriber receives.
    #[serde(default)]
    data: Value,
}

#[derive(Deserialize, JsonSchema)]
struct EnqueueIn {
    queue: String,
    function_id: String,
    #[serde(default)]
    data: Value,
    #[serde(rename = "messageReceiptId")]
    message_receipt_id: Option<String>,
    traceparent: Option<String>,
    baggage: Option<String>,
    namespace: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct QueueIn {
    /// The topic or named queue.
    queue: Option<String>,
    /// Accepted as an alias of `queue`.
    topic: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct MessageIn {
    /// The topic or named queue.
    queue: Option<String>,
    /// Accepted as an alias of `queue`.
    topic: Option<String>,
    message_id: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
struct DlqIn {
    /// The topic or named queue.
    topic: Option<String>,
    /// Accepted as an alias of `topic`.
    queue: Option<String>,
    offset: Option<u64>,
    limit: Option<u64>,
}

fn required(v: Option<String>, code: &'static str, what: &str) -> Result<String, ErrorBody> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| ErrorBody::new(code, format!("`{what}` is required")))
}

/// `{"queue", "message_id", "redriven"}` of the one-message functions.
fn message_count_schema() -> Value {
    json!({"type": "object", "properties": {"queue": {"type": "string"},
        "message_id": {"type": "string"}, "redriven": {"type": "integer", "description": "0 or 1"}}})
}

/// The internal queues one user-facing name (a topic or a named queue) stands for.
#[derive(Default)]
struct Group {
    broker_type: &'static str,
    queues: BTreeSet<String>,
}

impl Shared {
    /// Every user-facing name with its broker type and internal queues: the stored ones (one
    /// adapter call), the bound ones and the configured named queues.
    async fn groups(&self) -> Result<BTreeMap<String, Group>, iii_adapter_api::AdapterError> {
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        for q in self.store.queues().await? {
            if let Some(n) = QueueName::decode(&q) {
                let g = out.entry(n.public().to_string()).or_default();
                g.broker_type = n.broker_type();
                g.queues.insert(q);
            }
        }
        for (t, d) in self.bound_topics() {
            let g = out.entry(t).or_insert_with(|| Group {
                broker_type: "builtin",
                ..Group::default()
            });
            g.queues.extend(d.into_keys());
        }
        for q in self.cfg.named.keys() {
            let g = out.entry(q.clone()).or_default();
            g.broker_type = "function_queue";
            g.queues.insert(QueueName::Named(q.clone()).encode());
        }
        Ok(out)
    }

    /// Every internal queue a user-facing name stands for.
    async fn resolve(&self, public: &str) -> Result<Vec<String>, iii_adapter_api::AdapterError> {
        Ok(self
            .groups()
            .await?
            .remove(public)
            .map(|g| g.queues.into_iter().collect())
            .unwrap_or_default())
    }
}

impl Prepared for QueueService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        let sh = self.shared.clone();
        let remote = self.remote.clone();
        sh.set_core(reg.core());
        // `iii_queue_depth{queue}`: the waiting count of each queue, read from the adapter
        // when metrics are read.
        let weak = Arc::downgrade(&sh);
        reg.core().metrics().add_sampler(Arc::new(move || {
            let weak = weak.clone();
            Box::pin(async move {
                let Some(sh) = weak.upgrade() else {
                    return Vec::new();
                };
                let Ok(queues) = sh.store.queues().await else {
                    return Vec::new();
                };
                let mut out = Vec::with_capacity(queues.len());
                for q in queues {
                    if let Ok(s) = sh.store.stats(&q).await {
                        out.push((
                            "iii_queue_depth".to_string(),
                            vec![("queue".to_string(), q)],
                            s.waiting as f64,
                        ));
                    }
                }
                out
            })
        }));
        reg.trigger_type(TriggerTypeSpec {
            id: iii_protocol::ids::trigger_types::DURABLE_SUBSCRIBER.into(),
            description: "Durable queue subscriber: every subscribed function gets its own copy of each message published to the topic".into(),
            config_schema: Some(json!({"type": "object", "required": ["topic"], "properties": {
                "topic": {"type": "string"},
                "condition_function_id": {"type": "string"},
                "queue_config": {"type": "object", "properties": {
                    "type": {"enum": ["standard", "fifo"]}, "maxRetries": {"type": "integer"},
                    "concurrency": {"type": "integer"}, "backoffDelayMs": {"type": "integer"},
                    "backoffType": {"enum": ["exponential", "fixed"]},
                    "visibilityTimeout": {"type": "integer", "description": "lease of one delivery, ms"},
                    "delaySeconds": {"type": "integer"}, "maxPriority": {"type": "integer"}}}}})),
            request_schema: Some(json!({"description": "the published `data`"})),
            response_schema: None,
            provider: Arc::new(SubscriberType(sh.clone())),
        });
        reg.function(
            function(
                &sh,
                "iii::durable::publish",
                "Publish to a durable topic: each subscribed function gets its own copy",
                move |_core, i: PublishIn, sh| {
                    let remote = remote.clone();
                    async move {
                        let topic = required(i.topic, codes::TOPIC_NOT_SET, "topic")?;
                        if let Some(r) = remote {
                            r.call(
                                "iii::durable::publish",
                                json!({"topic": topic, "data": i.data}),
                            )
                            .await
                            .map_err(|e| err(codes::ENQUEUE_ERROR, e))?;
                            return Ok(Value::Null);
                        }
                        sh.publish(&topic, i.data, None, None)
                            .await
                            .map_err(|e| err(codes::ENQUEUE_ERROR, e))?;
                        Ok(Value::Null)
                    }
                },
            )
            .returns(json!({"type": "null"})),
        );
        reg.function(
            function(&sh, iii_protocol::ids::functions::QUEUE_ENQUEUE, "Enqueue a call to a function on a named queue (TriggerAction.Enqueue)", |_core, i: EnqueueIn, sh| async move {
                let Some(nq) = sh.cfg.named.get(&i.queue) else {
                    let known: Vec<&str> = sh.cfg.named.keys().map(String::as_str).collect();
                    return Err(ErrorBody::new(codes::ENQUEUE_ERROR, format!(
                        "Queue '{}' not found; configure it under `queue_configs` of the queue entry (configured: {})",
                        i.queue, known.join(", "))));
                };
                let group = match &nq.group_field {
                    Some(f) if nq.settings.fifo => match i.data.get(f) {
                        None | Some(Value::Null) => return Err(ErrorBody::new(codes::ENQUEUE_ERROR, format!(
                            "queue '{}' is fifo and groups messages by `{f}`, which the data lacks (or is null)", i.queue))),
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(v) => Some(v.to_string()),
                    },
                    _ => None,
                };
                let id = i.message_receipt_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let ns = i.namespace.unwrap_or_else(|| iii_core::DEFAULT_NS.to_string());
                let msg = NewMessage {
                    id: id.clone(),
                    payload: i.data,
                    meta: json!({"function_id": i.function_id, "namespace": ns,
                        "traceparent": i.traceparent, "baggage": i.baggage}),
                    group,
                    max_attempts: nq.settings.max_attempts,
                    delay_ms: 0,
                };
                let q = QueueName::Named(i.queue.clone()).encode();
                sh.store.enqueue(&q, &msg).await.map_err(|e| err(codes::ENQUEUE_ERROR, e))?;
                sh.wake(&q);
                Ok(json!({"messageReceiptId": id}))
            })
            .returns(json!({"type": "object", "properties": {"messageReceiptId": {"type": "string"}}})),
        );
        reg.function(function(
            &sh,
            "iii::queue::redrive",
            "Move every dead letter of a topic or named queue back to its queue",
            |_core, i: QueueIn, sh| async move {
                let name = required(i.queue.or(i.topic), codes::QUEUE_NOT_SET, "queue")?;
                let mut n = 0;
                for q in sh
                    .resolve(&name)
                    .await
                    .map_err(|e| err(codes::REDRIVE_FAILED, e))?
                {
                    n += sh
                        .store
                        .redrive(&q, None)
                        .await
                        .map_err(|e| err(codes::REDRIVE_FAILED, e))?;
                    sh.wake(&q);
                }
                Ok(json!({"queue": name, "redriven": n}))
            },
        )
        .returns(json!({"type": "object", "properties": {"queue": {"type": "string"}, "redriven": {"type": "integer"}}})));
        reg.function(
            function(
                &sh,
                "iii::queue::redrive_message",
                "Move one dead letter back to its queue",
                |_core, i: MessageIn, sh| async move {
                    let name = required(i.queue.or(i.topic), codes::QUEUE_NOT_SET, "queue")?;
                    let id = required(i.message_id, codes::MESSAGE_ID_NOT_SET, "message_id")?;
                    let mut n = 0;
                    for q in sh
                        .resolve(&name)
                        .await
                        .map_err(|e| err(codes::REDRIVE_MESSAGE_FAILED, e))?
                    {
                        n += sh
                            .store
                            .redrive(&q, Some(&id))
                            .await
                            .map_err(|e| err(codes::REDRIVE_MESSAGE_FAILED, e))?;
                        sh.wake(&q);
                    }
                    Ok(json!({"queue": name, "message_id": id, "redriven": n.min(1)}))
                },
            )
            .returns(message_count_schema()),
        );
        reg.function(
            function(
                &sh,
                "iii::queue::discard_message",
                "Delete one dead letter",
                |_core, i: MessageIn, sh| async move {
                    let name = required(i.queue.or(i.topic), codes::QUEUE_NOT_SET, "queue")?;
                    let id = required(i.message_id, codes::MESSAGE_ID_NOT_SET, "message_id")?;
                    let mut n = 0u64;
                    for q in sh
                        .resolve(&name)
                        .await
                        .map_err(|e| err(codes::DISCARD_MESSAGE_FAILED, e))?
                    {
                        n += u64::from(
                            sh.store
                                .discard(&q, &id)
                                .await
                                .map_err(|e| err(codes::DISCARD_MESSAGE_FAILED, e))?,
                        );
                    }
                    Ok(json!({"queue": name, "message_id": id, "redriven": n.min(1)}))
                },
            )
            .returns(message_count_schema()),
        );
        reg.function(function(
            &sh,
            "engine::queue::list_topics",
            "Topics and named queues, with their subscriber counts",
            |_core, _i: NoInput, sh| async move {
                let names = sh
                    .groups()
                    .await
                    .map_err(|e| err(codes::LIST_TOPICS_FAILED, e))?;
                let bound = sh.bound_topics();
                Ok(Value::Array(
                    names
                        .into_iter()
                        .map(|(name, g)| {
                            let subs = bound.get(&name).map_or(0, |d| d.len());
                            json!({"name": name, "broker_type": g.broker_type, "subscriber_count": subs})
                        })
                        .collect(),
                ))
            },
        )
        .returns(json!({"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "broker_type": {"type": "string"}, "subscriber_count": {"type": "integer"}}}})));
        reg.function(
            function(&sh, "engine::queue::topic_stats", "Depth, consumers and dead letters of a topic or named queue", |_core, i: DlqIn, sh| async move {
                let name = required(i.topic.or(i.queue), codes::TOPIC_REQUIRED, "topic")?;
                let (mut depth, mut dead) = (0u64, 0u64);
                let mut config = Value::Null;
                for q in sh.resolve(&name).await.map_err(|e| err(codes::TOPIC_STATS_FAILED, e))? {
                    let s = sh.store.stats(&q).await.map_err(|e| err(codes::TOPIC_STATS_FAILED, e))?;
                    depth += s.waiting + s.in_flight;
                    dead += s.dead;
                    if config.is_null() {
                        if let Some(st) = sh.settings_of(&q) {
                            config = st.to_json();
                        }
                    }
                }
                let consumers = if sh.cfg.named.contains_key(&name) { 1 } else { sh.consumer_count(&name) };
                Ok(json!({"depth": depth, "consumer_count": consumers, "dlq_depth": dead, "config": config}))
            })
            .returns(json!({"type": "object", "properties": {"depth": {"type": "integer"}, "consumer_count": {"type": "integer"}, "dlq_depth": {"type": "integer"}, "config": {}}})),
        );
        reg.function(function(
            &sh,
            "engine::queue::dlq_topics",
            "Topics and named queues that hold dead letters",
            |_core, _i: NoInput, sh| async move {
                let mut out = Vec::new();
                for (name, g) in sh
                    .groups()
                    .await
                    .map_err(|e| err(codes::DLQ_TOPICS_FAILED, e))?
                {
                    let broker = g.broker_type;
                    let mut n = 0;
                    for q in g.queues {
                        n += sh
                            .store
                            .stats(&q)
                            .await
                            .map_err(|e| err(codes::DLQ_TOPICS_FAILED, e))?
                            .dead;
                    }
                    if n > 0 {
                        out.push(json!({"topic": name, "broker_type": broker, "message_count": n}));
                    }
                }
                Ok(Value::Array(out))
            },
        )
        .returns(json!({"type": "array", "items": {"type": "object", "properties": {"topic": {"type": "string"}, "broker_type": {"type": "string"}, "message_count": {"type": "integer"}}}})));
        reg.function(
            function(&sh, "engine::queue::dlq_messages", "Dead letters of a topic or named queue, oldest first", |_core, i: DlqIn, sh| async move {
                let name = required(i.topic.or(i.queue), codes::TOPIC_REQUIRED, "topic")?;
                let (offset, limit) = (i.offset.unwrap_or(0), i.limit.unwrap_or(50));
                let mut all = Vec::new();
                for q in sh.resolve(&name).await.map_err(|e| err(codes::DLQ_MESSAGES_FAILED, e))? {
                    all.extend(sh.store.dead_letters(&q, 0, offset.saturating_add(limit)).await
                        .map_err(|e| err(codes::DLQ_MESSAGES_FAILED, e))?);
                }
                all.sort_by_key(|d| d.failed_at_ms);
                Ok(Value::Array(all.into_iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(usize::try_from(limit).unwrap_or(usize::MAX))
                    .map(|d| {
                        let size = d.payload.to_string().len();
                        json!({"id": d.message_id, "payload": d.payload, "error": d.error,
                            "failed_at": d.failed_at_ms / 1000, "retries": d.attempts, "size_bytes": size})
                    }).collect()))
            })
            .returns(json!({"type": "array", "items": {"type": "object", "properties": {"id": {"type": "string"}, "payload": {}, "error": {"type": "string"}, "failed_at": {"type": "integer", "description": "seconds since the Unix epoch"}, "retries": {"type": "integer"}, "size_bytes": {"type": "integer"}}}})),
        );
    }

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let sh = self.shared.clone();
        Some(Box::pin(async move {
            sh.start_named();
            match sh.store.queues().await {
                Ok(qs) => {
                    let orphans: Vec<String> = qs
                        .iter()
                        .filter_map(|q| match QueueName::decode(q) {
                            Some(QueueName::Named(n)) if !sh.cfg.named.contains_key(&n) => Some(n),
                            _ => None,
                        })
                        .collect();
                    if !orphans.is_empty() {
                        tracing::warn!(queues = ?orphans, "stored messages belong to named queues that are no longer configured; they wait until the queue is configured again");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not list the stored queues"),
            }
            stop.cancelled().await;
            sh.shutdown();
        }))
    }
}

#[cfg(test)]
mod tests;
