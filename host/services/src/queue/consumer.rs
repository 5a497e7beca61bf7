//! The queue service's shared state: bound subscribers, the topic fan-out table, and one
//! consumer task per internal queue that leases messages, calls the target function and acks
//! or nacks. Retry policy (attempts, backoff) lives here; storage and leases in the adapter.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use iii_adapter_api::queue::{Delivery, LeaseRequest, NackOutcome, NewMessage};
use iii_adapter_api::{AdapterError, QueueStore};
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::CancellationToken;
use iii_core::{Core, WeakCore};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{Notify, Semaphore};

use super::config::{subscriber_settings, QueueConfig, Settings};
use super::names::QueueName;

/// One running consumer.
struct Consumer {
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// Bindings that share it (competing consumers); named queues have none and never stop.
    bindings: usize,
    settings: Settings,
}

/// A bound subscriber of a topic.
#[derive(Clone)]
pub(crate) struct Dest {
    pub function_id: String,
    pub namespace: String,
}

/// State shared by the service's functions, its trigger type and its consumers.
pub(crate) struct Shared {
    pub store: Arc<dyn QueueStore>,
    pub cfg: QueueConfig,
    core: OnceLock<WeakCore>,
    stop: CancellationToken,
    consumers: Mutex<HashMap<String, Consumer>>,
    /// topic → encoded subscriber queue → destination, for the bindings armed now.
    topics: Mutex<BTreeMap<String, BTreeMap<String, Dest>>>,
    /// binding id → the encoded queue it consumes.
    bound: Mutex<HashMap<String, (String, String)>>,
}

fn meta(
    function_id: &str,
    namespace: &str,
    traceparent: Option<&str>,
    baggage: Option<&str>,
) -> Value {
    json!({"function_id": function_id, "namespace": namespace,
        "traceparent": traceparent, "baggage": baggage})
}

impl Shared {
    pub(crate) fn new(store: Arc<dyn QueueStore>, cfg: QueueConfig) -> Arc<Shared> {
        Arc::new(Shared {
            store,
            cfg,
            core: OnceLock::new(),
            stop: CancellationToken::new(),
            consumers: Mutex::default(),
            topics: Mutex::default(),
            bound: Mutex::default(),
        })
    }

    pub(crate) fn set_core(&self, core: &Core) {
        let _ = self.core.set(core.downgrade());
    }

    fn core(&self) -> Option<Core> {
        self.core.get().and_then(WeakCore::upgrade)
    }

    /// Stops every consumer (the engine is shutting down). Deliveries in flight are not
    /// acknowledged; the adapter hands them out again after a restart.
    pub(crate) fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Wakes the consumer of `queue`, if one runs.
    pub(crate) fn wake(&self, queue: &str) {
        if let Some(c) = self.consumers.lock().get(queue) {
            c.wake.notify_one();
        }
    }

    fn start(
        self: &Arc<Self>,
        queue: String,
        settings: Settings,
        condition: Option<String>,
        bindings: usize,
    ) {
        let wake = Arc::new(Notify::new());
        let stop = self.stop.child_token();
        self.consumers.lock().insert(
            queue.clone(),
            Consumer {
                wake: wake.clone(),
                stop: stop.clone(),
                bindings,
                settings: settings.clone(),
            },
        );
        tokio::spawn(consume(
            self.clone(),
            queue,
            settings,
            condition,
            wake,
            stop,
        ));
    }

    /// Starts the consumers of the configured named queues.
    pub(crate) fn start_named(self: &Arc<Self>) {
        for (name, nq) in &self.cfg.named {
            self.start(
                QueueName::Named(name.clone()).encode(),
                nq.settings.clone(),
                None,
                0,
            );
        }
    }

    /// The settings of a running consumer.
    pub(crate) fn settings_of(&self, queue: &str) -> Option<Settings> {
        self.consumers.lock().get(queue).map(|c| c.settings.clone())
    }

    /// How many bindings consume the subscriber queues of `topic`.
    pub(crate) fn consumer_count(&self, topic: &str) -> usize {
        let queues: Vec<String> = self
            .topics
            .lock()
            .get(topic)
            .map(|d| d.keys().cloned().collect())
            .unwrap_or_default();
        let consumers = self.consumers.lock();
        queues
            .iter()
            .filter_map(|q| consumers.get(q))
            .map(|c| c.bindings)
            .sum()
    }

    /// The subscriber queues bound now, by topic.
    pub(crate) fn bound_topics(&self) -> BTreeMap<String, BTreeMap<String, Dest>> {
        self.topics.lock().clone()
    }

    /// `iii::durable::publish`: one durable copy per subscribed function. With no subscriber
    /// the message waits in the topic's unrouted queue for the first one to bind.
    pub(crate) async fn publish(
        self: &Arc<Self>,
        topic: &str,
        data: Value,
        traceparent: Option<&str>,
        baggage: Option<&str>,
    ) -> Result<(), AdapterError> {
        let id = uuid::Uuid::new_v4().to_string();
        if let Some(router) = self.store.router() {
            // The backend routes (it knows the subscribers of every engine on it): one message,
            // naming no function; each subscriber queue's consumer names its own.
            let msg = NewMessage {
                id,
                payload: data,
                meta: json!({"topic": topic, "traceparent": traceparent, "baggage": baggage}),
                group: None,
                max_attempts: self.cfg.defaults.max_attempts,
                delay_ms: 0,
            };
            router
                .publish(topic, &QueueName::Unrouted(topic.into()).encode(), &msg)
                .await?;
            for queue in self
                .topics
                .lock()
                .get(topic)
                .into_iter()
                .flat_map(|d| d.keys())
            {
                self.wake(queue);
            }
            return Ok(());
        }
        let dests = self.topics.lock().get(topic).cloned().unwrap_or_default();
        if dests.is_empty() {
            let msg = NewMessage {
                id,
                payload: data,
                meta: json!({"topic": topic, "traceparent": traceparent, "baggage": baggage}),
                group: None,
                max_attempts: self.cfg.defaults.max_attempts,
                delay_ms: 0,
            };
            return self
                .store
                .enqueue(&QueueName::Unrouted(topic.into()).encode(), &msg)
                .await;
        }
        for (queue, d) in dests {
            let s = self
                .settings_of(&queue)
                .unwrap_or_else(|| self.cfg.defaults.clone());
            let msg = NewMessage {
                id: id.clone(),
                payload: data.clone(),
                meta: meta(&d.function_id, &d.namespace, traceparent, baggage),
                group: None,
                max_attempts: s.max_attempts,
                delay_ms: s.delay_ms,
            };
            self.store.enqueue(&queue, &msg).await?;
            self.wake(&queue);
        }
        Ok(())
    }

    /// Arms a `durable:subscriber` binding.
    fn subscribe(self: &Arc<Self>, b: &Binding) -> Result<(), String> {
        let topic = b
            .config
            .get("topic")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or("`topic` is required (the topic to consume)")?
            .to_string();
        let settings = subscriber_settings(&self.cfg.defaults, &b.config)?;
        let condition = b
            .config
            .get("condition_function_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let queue = QueueName::Subscriber {
            topic: topic.clone(),
            function_id: b.function_id.clone(),
            namespace: b.namespace.clone(),
        }
        .encode();
        if let Some(old) = self
            .bound
            .lock()
            .insert(b.id.clone(), (topic.clone(), queue.clone()))
        {
            self.release(&old.0, &old.1);
        }
        let existing = {
            let mut consumers = self.consumers.lock();
            match consumers.get_mut(&queue) {
                Some(c) => {
                    c.bindings += 1;
                    if c.settings != settings {
                        tracing::warn!(trigger_id = %b.id, topic, function_id = %b.function_id,
                            "another binding of this function to this topic already set its queue_config; this binding's is ignored");
                    }
                    true
                }
                None => false,
            }
        };
        if !existing {
            self.start(queue.clone(), settings, condition, 1);
            self.topics.lock().entry(topic.clone()).or_default().insert(
                queue.clone(),
                Dest {
                    function_id: b.function_id.clone(),
                    namespace: b.namespace.clone(),
                },
            );
            let me = self.clone();
            tokio::spawn(async move {
                if let Some(router) = me.store.router() {
                    // Durable in the backend: stays bound when this engine goes, so publishes
                    // from other engines keep reaching the queue. Retried until it holds.
                    let mut wait = Duration::from_millis(200);
                    while let Err(e) = router.bind(&topic, &queue).await {
                        tracing::warn!(topic, queue, error = %e, "could not bind the subscriber queue to its topic in the backend; retrying");
                        if me.stop.is_cancelled() {
                            return;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
                me.adopt_unrouted(&topic, &queue).await
            });
        }
        Ok(())
    }

    fn unsubscribe(&self, b: &Binding) {
        if let Some((topic, queue)) = self.bound.lock().remove(&b.id) {
            self.release(&topic, &queue);
        }
    }

    /// One binding fewer on `queue`; the last one stops its consumer. Its messages stay.
    fn release(&self, topic: &str, queue: &str) {
        let mut consumers = self.consumers.lock();
        let Some(c) = consumers.get_mut(queue) else {
            return;
        };
        c.bindings = c.bindings.saturating_sub(1);
        if c.bindings == 0 {
            c.stop.cancel();
            consumers.remove(queue);
            let mut topics = self.topics.lock();
            if let Some(d) = topics.get_mut(topic) {
                d.remove(queue);
                if d.is_empty() {
                    topics.remove(topic);
                }
            }
        }
    }

    /// Moves what was published to `topic` while nobody subscribed into `queue`, the first
    /// subscriber's.
    async fn adopt_unrouted(&self, topic: &str, queue: &str) {
        let from = QueueName::Unrouted(topic.into()).encode();
        let Some(dest) = self
            .topics
            .lock()
            .get(topic)
            .and_then(|d| d.get(queue).cloned())
        else {
            return;
        };
        let s = self
            .settings_of(queue)
            .unwrap_or_else(|| self.cfg.defaults.clone());
        let mut moved = 0u64;
        loop {
            let req = LeaseRequest {
                max: 256,
                lease_ms: 60_000,
                fifo: false,
            };
            let batch = match self.store.lease(&from, req).await {
                Ok(l) if !l.deliveries.is_empty() => l.deliveries,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(topic, error = %e, "could not read the topic's unrouted messages");
                    break;
                }
            };
            for d in batch {
                let tp = d.meta.get("traceparent").and_then(Value::as_str);
                let bg = d.meta.get("baggage").and_then(Value::as_str);
                let msg = NewMessage {
                    id: d.message_id.clone(),
                    payload: d.payload.clone(),
                    meta: meta(&dest.function_id, &dest.namespace, tp, bg),
                    group: None,
                    max_attempts: s.max_attempts,
                    delay_ms: 0,
                };
                // Copy first, then ack: a crash in between duplicates, never loses.
                if let Err(e) = self.store.enqueue(queue, &msg).await {
                    tracing::warn!(topic, error = %e, "could not hand an unrouted message to its first subscriber");
                    let _ = self.store.nack(&from, &d.token, 1000, &e.message).await;
                    return;
                }
                let _ = self.store.ack(&from, &d.token).await;
                moved += 1;
            }
            self.wake(queue);
        }
        if moved > 0 {
            tracing::info!(topic, function_id = %dest.function_id, moved, "delivering messages published before the topic had a subscriber");
        }
    }
}

/// How soon a message whose function is not registered is tried again.
const NOT_REGISTERED_RETRY_MS: u64 = 1000;

/// The consumer loop of one internal queue.
async fn consume(
    shared: Arc<Shared>,
    queue: String,
    settings: Settings,
    condition: Option<String>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(settings.concurrency as usize));
    let poll = Duration::from_millis(settings.poll_ms);
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        let mut wait = poll;
        let free = permits.available_permits();
        if free > 0 {
            let req = LeaseRequest {
                max: u32::try_from(free).unwrap_or(u32::MAX),
                lease_ms: settings.lease_ms,
                fifo: settings.fifo,
            };
            match shared.store.lease(&queue, req).await {
                Ok(l) => {
                    failures = 0;
                    if let Some(d) = l.next_due_ms {
                        wait = wait.min(Duration::from_millis(d.max(1)));
                    }
                    for d in l.deliveries {
                        let Ok(permit) = permits.clone().try_acquire_owned() else {
                            break;
                        };
                        let (sh, q, s, c, w) = (
                            shared.clone(),
                            queue.clone(),
                            settings.clone(),
                            condition.clone(),
                            wake.clone(),
                        );
                        tokio::spawn(async move {
                            deliver(&sh, &q, &s, c.as_deref(), d).await;
                            drop(permit);
                            w.notify_one();
                        });
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 || failures.is_multiple_of(100) {
                        tracing::warn!(queue, failures, error = %e, "the queue adapter failed to hand out messages; retrying");
                    }
                    wait = poll.saturating_mul(failures.min(30));
                }
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
    }
}

/// Runs one delivery to its end: condition, call, then ack or nack.
async fn deliver(shared: &Shared, queue: &str, s: &Settings, condition: Option<&str>, d: Delivery) {
    let Some(core) = shared.core() else {
        return;
    };
    // A message routed by the backend names no function: the subscriber queue does.
    let from_queue = match QueueName::decode(queue) {
        Some(QueueName::Subscriber {
            function_id,
            namespace,
            ..
        }) => Some((function_id, namespace)),
        _ => None,
    };
    let fid = d
        .meta
        .get("function_id")
        .and_then(Value::as_str)
        .or(from_queue.as_ref().map(|(f, _)| f.as_str()));
    let Some(fid) = fid else {
        // Not something this service enqueued: dead-letter it at once rather than loop.
        let _ = shared
            .store
            .nack(queue, &d.token, 0, "the message names no function")
            .await;
        return;
    };
    let ns = d
        .meta
        .get("namespace")
        .and_then(Value::as_str)
        .or(from_queue.as_ref().map(|(_, n)| n.as_str()))
        .unwrap_or(iii_core::DEFAULT_NS);
    // A function that is not registered (yet: its worker is reconnecting after an engine
    // restart) is not a failed attempt; the message waits for it instead of burning retries.
    if core.lookup(ns, fid).is_none() {
        let _ = shared
            .store
            .release(queue, &d.token, NOT_REGISTERED_RETRY_MS)
            .await;
        return;
    }
    let data = d.payload.to_string();
    if let Some(cond) = condition {
        match core.condition(ns, cond, &data, None).await {
            Ok(false) => {
                let _ = shared.store.ack(queue, &d.token).await;
                return;
            }
            Ok(true) => {}
            Err(e) => {
                fail(
                    shared,
                    queue,
                    s,
                    &d,
                    fid,
                    &format!("condition function {cond} failed: {}", e.message),
                )
                .await;
                return;
            }
        }
    }
    match core.call(ns, fid, &data, None, None).await {
        Ok(_) => match shared.store.ack(queue, &d.token).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(queue, message_id = %d.message_id, function_id = fid,
                "the handler finished after the delivery's lease lapsed; the message was handed out again (raise the queue's lease)"),
            Err(e) => tracing::warn!(queue, message_id = %d.message_id, error = %e,
                "could not acknowledge a handled message; it will be delivered again"),
        },
        Err(e) => fail(shared, queue, s, &d, fid, &e.message).await,
    }
}

async fn fail(shared: &Shared, queue: &str, s: &Settings, d: &Delivery, fid: &str, error: &str) {
    let after = s.retry_after(d.attempt);
    match shared.store.nack(queue, &d.token, after, error).await {
        Ok(NackOutcome::DeadLettered) => {
            tracing::warn!(queue, message_id = %d.message_id, function_id = fid,
            attempts = d.attempt, error, "message dead-lettered after its last attempt")
        }
        Ok(NackOutcome::Retrying) => {
            tracing::debug!(queue, message_id = %d.message_id, function_id = fid,
            attempt = d.attempt, retry_in_ms = after, error, "delivery failed; retrying")
        }
        Ok(NackOutcome::Stale) => {}
        Err(e) => tracing::warn!(queue, message_id = %d.message_id, error = %e,
            "could not record a failed delivery; the message will be delivered again"),
    }
}

/// The `durable:subscriber` trigger type.
pub(crate) struct SubscriberType(pub Arc<Shared>);

impl BuiltinTriggerType for SubscriberType {
    fn register(&self, b: &Binding) -> Result<(), String> {
        self.0.subscribe(b)
    }
    fn unregister(&self, b: &Binding) {
        self.0.unsubscribe(b);
    }
}
