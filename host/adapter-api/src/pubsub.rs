//! The pub/sub adapter (PROTOCOL.md §8.5): a transport that carries `(topic, data)` messages
//! between the engines sharing it. No persistence, no retries, no ordering guarantee.
//!
//! The pub/sub service owns the subscriber bindings and invokes them; an adapter only moves
//! messages. `subscribe(topic)` tells it this engine wants the topic, `poll` hands back what
//! arrived for subscribed topics, and every engine invokes its own subscribers, so a message
//! published on one engine reaches the bindings of all of them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::Notify;

use crate::{AdapterError, AdapterErrorKind, AdapterWorld};

/// One message as `poll` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The topic it was published on.
    pub topic: String,
    /// The published `data`.
    pub data: Value,
}

/// A pub/sub adapter. Calls may run concurrently.
#[async_trait]
pub trait PubSubBus: Send + Sync {
    /// Sends `data` to every engine subscribed to `topic` (this one included).
    async fn publish(&self, topic: &str, data: &Value) -> Result<(), AdapterError>;
    /// Starts receiving `topic`. Idempotent.
    async fn subscribe(&self, topic: &str) -> Result<(), AdapterError>;
    /// Stops receiving `topic`. Idempotent.
    async fn unsubscribe(&self, topic: &str) -> Result<(), AdapterError>;
    /// Up to `max` received messages, oldest first; waits up to `wait_ms` when there is none.
    async fn poll(&self, max: u32, wait_ms: u32) -> Result<Vec<BusMessage>, AdapterError>;
}

/// The `pubsub-adapter` world of `iii:pubsub@0.1.0`.
pub struct PubSubWorld;
impl AdapterWorld for PubSubWorld {
    const WORLD: &'static str = "iii:pubsub/pubsub-adapter@0.1.0";
    type Store = dyn PubSubBus;
}

/// The builtin `local` bus: messages stay in this process. A published message is queued only
/// when its topic is subscribed, and the queue is bounded, so a stalled consumer makes
/// `publish` fail loudly instead of growing memory.
pub struct LocalBus {
    inner: Mutex<Local>,
    ready: Notify,
    capacity: usize,
}

#[derive(Default)]
struct Local {
    /// Subscribed topics with how many `subscribe` calls each has outstanding.
    topics: HashMap<String, usize>,
    queue: VecDeque<BusMessage>,
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::with_capacity(65_536)
    }
}

impl LocalBus {
    /// A bus that holds at most `capacity` undelivered messages.
    pub fn with_capacity(capacity: usize) -> Self {
        LocalBus {
            inner: Mutex::new(Local::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
        }
    }
}

#[async_trait]
impl PubSubBus for LocalBus {
    async fn publish(&self, topic: &str, data: &Value) -> Result<(), AdapterError> {
        {
            let mut l = self.inner.lock();
            if !l.topics.contains_key(topic) {
                return Ok(());
            }
            if l.queue.len() >= self.capacity {
                return Err(AdapterError::new(
                    AdapterErrorKind::Backend,
                    format!(
                        "the local pub/sub bus holds {} undelivered messages; publish refused",
                        self.capacity
                    ),
                ));
            }
            l.queue.push_back(BusMessage {
                topic: topic.to_string(),
                data: data.clone(),
            });
        }
        self.ready.notify_one();
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<(), AdapterError> {
        *self
            .inner
            .lock()
            .topics
            .entry(topic.to_string())
            .or_default() += 1;
        Ok(())
    }

    async fn unsubscribe(&self, topic: &str) -> Result<(), AdapterError> {
        let mut l = self.inner.lock();
        if let Some(n) = l.topics.get_mut(topic) {
            *n -= 1;
            if *n == 0 {
                l.topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn poll(&self, max: u32, wait_ms: u32) -> Result<Vec<BusMessage>, AdapterError> {
        let take = |l: &mut Local| {
            let n = l.queue.len().min(max.max(1) as usize);
            l.queue.drain(..n).collect::<Vec<_>>()
        };
        // Register interest before looking, so a publish between the look and the wait wakes us.
        let notified = self.ready.notified();
        {
            let got = take(&mut self.inner.lock());
            if !got.is_empty() {
                return Ok(got);
            }
        }
        let _ = tokio::time::timeout(Duration::from_millis(u64::from(wait_ms)), notified).await;
        Ok(take(&mut self.inner.lock()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn only_subscribed_topics_are_carried_in_order() {
        let b = LocalBus::default();
        b.publish("t", &json!(0)).await.unwrap();
        b.subscribe("t").await.unwrap();
        b.publish("t", &json!(1)).await.unwrap();
        b.publish("other", &json!(2)).await.unwrap();
        b.publish("t", &json!(3)).await.unwrap();
        let got = b.poll(10, 0).await.unwrap();
        let data: Vec<Value> = got.iter().map(|m| m.data.clone()).collect();
        assert_eq!(data, [json!(1), json!(3)]);
        assert!(got.iter().all(|m| m.topic == "t"));
        // Two subscribes need two unsubscribes.
        b.subscribe("t").await.unwrap();
        b.unsubscribe("t").await.unwrap();
        b.publish("t", &json!(4)).await.unwrap();
        b.unsubscribe("t").await.unwrap();
        b.publish("t", &json!(5)).await.unwrap();
        let got = b.poll(10, 0).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].data, json!(4));
    }

    #[tokio::test]
    async fn poll_waits_for_a_publish_and_a_full_bus_refuses() {
        let b = std::sync::Arc::new(LocalBus::with_capacity(2));
        b.subscribe("t").await.unwrap();
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.poll(10, 5_000).await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.publish("t", &json!("x")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1);
        b.publish("t", &json!(1)).await.unwrap();
        b.publish("t", &json!(2)).await.unwrap();
        let e = b.publish("t", &json!(3)).await.unwrap_err();
        assert_eq!(e.kind, AdapterErrorKind::Backend);
        assert_eq!(b.poll(1, 0).await.unwrap()[0].data, json!(1));
        assert!(b.poll(1, 10).await.unwrap()[0].data == json!(2));
        assert!(b.poll(1, 10).await.unwrap().is_empty());
    }
}
