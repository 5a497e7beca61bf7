//! [`MemoryQueueStore`]: the reference semantics of [`QueueStore`], in a map.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::queue::{
    DeadLetter, Delivery, LeaseRequest, Leased, NackOutcome, NewMessage, QueueStats, QueueStore,
};
use crate::AdapterError;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

struct Live {
    msg: NewMessage,
    attempts: u32,
    ready_at: u64,
    /// `(token, lease end)` while leased.
    lease: Option<(String, u64)>,
}

#[derive(Default)]
struct Queue {
    /// Live messages by arrival sequence: iteration order is FIFO order.
    live: BTreeMap<u64, Live>,
    /// Every id held, live or dead, for idempotent enqueue.
    ids: HashSet<String>,
    tokens: HashMap<String, u64>,
    dead: Vec<DeadLetter>,
}

impl Queue {
    fn dead_letter(&mut self, seq: u64, error: &str, now: u64) {
        if let Some(l) = self.live.remove(&seq) {
            if let Some((t, _)) = &l.lease {
                self.tokens.remove(t);
            }
            self.dead.push(DeadLetter {
                message_id: l.msg.id,
                payload: l.msg.payload,
                meta: l.msg.meta,
                error: error.to_string(),
                failed_at_ms: now,
                attempts: l.attempts,
                max_attempts: l.msg.max_attempts,
                group: l.msg.group,
            });
        }
    }

    /// Ends the leases that lapsed, counting the attempt.
    fn lapse(&mut self, now: u64) {
        let lapsed: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.lease.as_ref().is_some_and(|(_, until)| *until <= now))
            .map(|(s, _)| *s)
            .collect();
        for seq in lapsed {
            let Some(l) = self.live.get_mut(&seq) else {
                continue;
            };
            if let Some((t, _)) = l.lease.take() {
                self.tokens.remove(&t);
            }
            l.attempts += 1;
            l.ready_at = now;
            if l.attempts >= l.msg.max_attempts {
                self.dead_letter(seq, "the lease lapsed on the last attempt", now);
            }
        }
    }
}

/// An in-memory [`QueueStore`] with the delivery contract of the trait; gone with the
/// process. For service tests.
#[derive(Default)]
pub struct MemoryQueueStore {
    queues: Mutex<BTreeMap<String, Queue>>,
    next: Mutex<u64>,
}

impl MemoryQueueStore {
    fn seq(&self) -> u64 {
        let mut n = self.next.lock();
        *n += 1;
        *n
    }
}

#[async_trait]
impl QueueStore for MemoryQueueStore {
    async fn enqueue(&self, queue: &str, msg: &NewMessage) -> Result<(), AdapterError> {
        let seq = self.seq();
        let mut qs = self.queues.lock();
        let q = qs.entry(queue.to_string()).or_default();
        if !q.ids.insert(msg.id.clone()) {
            return Ok(());
        }
        let mut msg = msg.clone();
        msg.max_attempts = msg.max_attempts.max(1);
        let ready_at = now_ms().saturating_add(msg.delay_ms);
        q.live.insert(
            seq,
            Live {
                msg,
                attempts: 0,
                ready_at,
                lease: None,
            },
        );
        Ok(())
    }

    async fn lease(&self, queue: &str, req: LeaseRequest) -> Result<Leased, AdapterError> {
        let now = now_ms();
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(Leased::default());
        };
        q.lapse(now);
        let mut out = Leased::default();
        let mut groups_seen: HashSet<Option<String>> = HashSet::new();
        let mut next_due: Option<u64> = None;
        let mut due = |t: u64| {
            let d = t.saturating_sub(now);
            next_due = Some(next_due.map_or(d, |n: u64| n.min(d)));
        };
        let mut picked = Vec::new();
        for (seq, l) in &q.live {
            if let Some((_, until)) = &l.lease {
                due(*until);
            } else if l.ready_at > now {
                due(l.ready_at);
            }
            if req.fifo && !groups_seen.insert(l.msg.group.clone()) {
                continue;
            }
            if l.lease.is_some() || l.ready_at > now {
                continue;
            }
            if picked.len() < req.max as usize {
                picked.push(*seq);
            }
        }
        for seq in picked {
            let token = format!("{seq}.{}", self.seq());
            let Some(l) = q.live.get_mut(&seq) else {
                continue;
            };
            l.lease = Some((token.clone(), now.saturating_add(req.lease_ms)));
            q.tokens.insert(token.clone(), seq);
            due(now.saturating_add(req.lease_ms));
            out.deliveries.push(Delivery {
                token,
                message_id: l.msg.id.clone(),
                payload: l.msg.payload.clone(),
                meta: l.msg.meta.clone(),
                group: l.msg.group.clone(),
                attempt: l.attempts + 1,
                max_attempts: l.msg.max_attempts,
            });
        }
        out.next_due_ms = next_due;
        Ok(out)
    }

    async fn ack(&self, queue: &str, token: &str) -> Result<bool, AdapterError> {
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(false);
        };
        let Some(seq) = q.tokens.remove(token) else {
            return Ok(false);
        };
        if let Some(l) = q.live.remove(&seq) {
            q.ids.remove(&l.msg.id);
        }
        Ok(true)
    }

    async fn nack(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
        error: &str,
    ) -> Result<NackOutcome, AdapterError> {
        let now = now_ms();
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(NackOutcome::Stale);
        };
        let Some(seq) = q.tokens.remove(token) else {
            return Ok(NackOutcome::Stale);
        };
        let Some(l) = q.live.get_mut(&seq) else {
            return Ok(NackOutcome::Stale);
        };
        l.lease = None;
        l.attempts += 1;
        if l.attempts >= l.msg.max_attempts {
            q.dead_letter(seq, error, now);
            return Ok(NackOutcome::DeadLettered);
        }
        l.ready_at = now.saturating_add(retry_after_ms);
        Ok(NackOutcome::Retrying)
    }

    async fn release(
        &self,
        queue: &str,
        token: &str,
        retry_after_ms: u64,
    ) -> Result<bool, AdapterError> {
        let now = now_ms();
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(false);
        };
        let Some(seq) = q.tokens.remove(token) else {
            return Ok(false);
        };
        let Some(l) = q.live.get_mut(&seq) else {
            return Ok(false);
        };
        l.lease = None;
        l.ready_at = now.saturating_add(retry_after_ms);
        Ok(true)
    }

    async fn dead_letters(
        &self,
        queue: &str,
        offset: u64,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, AdapterError> {
        let qs = self.queues.lock();
        Ok(qs
            .get(queue)
            .map(|q| {
                q.dead
                    .iter()
                    .skip(usize::try_from(offset).unwrap_or(usize::MAX))
                    .take(usize::try_from(limit).unwrap_or(usize::MAX))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn redrive(&self, queue: &str, message_id: Option<&str>) -> Result<u64, AdapterError> {
        let now = now_ms();
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(0);
        };
        let (back, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut q.dead)
            .into_iter()
            .partition(|d| message_id.is_none_or(|id| d.message_id == id));
        q.dead = keep;
        let n = back.len() as u64;
        for d in back {
            let seq = {
                let mut s = self.next.lock();
                *s += 1;
                *s
            };
            q.live.insert(
                seq,
                Live {
                    msg: NewMessage {
                        id: d.message_id,
                        payload: d.payload,
                        meta: d.meta,
                        group: d.group,
                        max_attempts: d.max_attempts.max(1),
                        delay_ms: 0,
                    },
                    attempts: 0,
                    ready_at: now,
                    lease: None,
                },
            );
        }
        Ok(n)
    }

    async fn discard(&self, queue: &str, message_id: &str) -> Result<bool, AdapterError> {
        let mut qs = self.queues.lock();
        let Some(q) = qs.get_mut(queue) else {
            return Ok(false);
        };
        let before = q.dead.len();
        q.dead.retain(|d| d.message_id != message_id);
        let gone = q.dead.len() < before;
        if gone {
            q.ids.remove(message_id);
        }
        Ok(gone)
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, AdapterError> {
        let qs = self.queues.lock();
        Ok(qs
            .get(queue)
            .map(|q| {
                let in_flight = q.live.values().filter(|l| l.lease.is_some()).count() as u64;
                QueueStats {
                    waiting: q.live.len() as u64 - in_flight,
                    in_flight,
                    dead: q.dead.len() as u64,
                }
            })
            .unwrap_or_default())
    }

    async fn queues(&self) -> Result<Vec<String>, AdapterError> {
        let qs = self.queues.lock();
        Ok(qs
            .iter()
            .filter(|(_, q)| !q.live.is_empty() || !q.dead.is_empty())
            .map(|(n, _)| n.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(id: &str, group: Option<&str>, max_attempts: u32) -> NewMessage {
        NewMessage {
            id: id.into(),
            payload: json!({"id": id}),
            meta: json!({}),
            group: group.map(str::to_string),
            max_attempts,
            delay_ms: 0,
        }
    }

    const ONE: LeaseRequest = LeaseRequest {
        max: 10,
        lease_ms: 60_000,
        fifo: false,
    };

    #[tokio::test]
    async fn ack_deletes_and_a_stale_token_changes_nothing() {
        let q = MemoryQueueStore::default();
        q.enqueue("q", &msg("a", None, 3)).await.unwrap();
        q.enqueue("q", &msg("a", None, 3)).await.unwrap();
        let l = q.lease("q", ONE).await.unwrap();
        assert_eq!(l.deliveries.len(), 1, "a repeated id is stored once");
        assert_eq!(q.lease("q", ONE).await.unwrap().deliveries.len(), 0);
        assert!(q.ack("q", &l.deliveries[0].token).await.unwrap());
        assert!(!q.ack("q", &l.deliveries[0].token).await.unwrap());
        assert_eq!(q.stats("q").await.unwrap(), QueueStats::default());
        assert!(q.queues().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn nack_retries_then_dead_letters_and_redrive_resets() {
        let q = MemoryQueueStore::default();
        q.enqueue("q", &msg("a", None, 2)).await.unwrap();
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 1);
        assert_eq!(
            q.nack("q", &d.token, 0, "boom").await.unwrap(),
            NackOutcome::Retrying
        );
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 2);
        assert_eq!(
            q.nack("q", &d.token, 0, "boom again").await.unwrap(),
            NackOutcome::DeadLettered
        );
        assert_eq!(
            q.nack("q", &d.token, 0, "late").await.unwrap(),
            NackOutcome::Stale
        );
        let dead = q.dead_letters("q", 0, 10).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].error, "boom again");
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(q.redrive("q", None).await.unwrap(), 1);
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 1, "a redrive resets the attempts");
    }

    #[tokio::test]
    async fn release_hands_the_message_out_again_without_counting() {
        let q = MemoryQueueStore::default();
        q.enqueue("q", &msg("a", None, 1)).await.unwrap();
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert!(q.release("q", &d.token, 0).await.unwrap());
        assert!(
            !q.release("q", &d.token, 0).await.unwrap(),
            "the lease ended"
        );
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 1, "a release is not an attempt");
    }

    #[tokio::test]
    async fn a_retry_delay_is_reported_as_next_due() {
        let q = MemoryQueueStore::default();
        q.enqueue("q", &msg("a", None, 3)).await.unwrap();
        let d = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        q.nack("q", &d.token, 50_000, "later").await.unwrap();
        let l = q.lease("q", ONE).await.unwrap();
        assert!(l.deliveries.is_empty());
        let due = l.next_due_ms.expect("a delayed message is due later");
        assert!(due > 40_000 && due <= 50_000, "{due}");
    }

    #[tokio::test]
    async fn a_lapsed_lease_redelivers_and_counts_the_attempt() {
        let q = MemoryQueueStore::default();
        q.enqueue("q", &msg("a", None, 3)).await.unwrap();
        let short = LeaseRequest { lease_ms: 0, ..ONE };
        let first = q.lease("q", short).await.unwrap().deliveries.remove(0);
        let second = q.lease("q", ONE).await.unwrap().deliveries.remove(0);
        assert_eq!(second.attempt, 2);
        assert!(
            !q.ack("q", &first.token).await.unwrap(),
            "the first lease ended"
        );
        assert!(q.ack("q", &second.token).await.unwrap());
    }

    #[tokio::test]
    async fn fifo_hands_out_one_message_per_group_in_order_retries_included() {
        let q = MemoryQueueStore::default();
        for (id, g) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")] {
            q.enqueue("q", &msg(id, Some(g), 3)).await.unwrap();
        }
        let fifo = LeaseRequest { fifo: true, ..ONE };
        let l = q.lease("q", fifo).await.unwrap();
        let ids: Vec<_> = l.deliveries.iter().map(|d| d.message_id.as_str()).collect();
        assert_eq!(ids, ["a1", "b1"]);
        assert!(q.lease("q", fifo).await.unwrap().deliveries.is_empty());
        // a1 fails and waits for its retry: a2 must not overtake it.
        q.nack("q", &l.deliveries[0].token, 30_000, "x")
            .await
            .unwrap();
        q.ack("q", &l.deliveries[1].token).await.unwrap();
        let l = q.lease("q", fifo).await.unwrap();
        let ids: Vec<_> = l.deliveries.iter().map(|d| d.message_id.as_str()).collect();
        assert_eq!(ids, ["b2"]);
    }
}
