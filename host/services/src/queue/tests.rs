//! The queue service against the in-memory queue store.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use iii_adapter_api::memory::MemoryLoader;
use iii_adapter_api::AdapterLoader;
use iii_core::testing::TestCore;
use iii_core::triggers::Binding;
use iii_core::FunctionSpec;

async fn queue_core(config: &str) -> TestCore {
    let mut t = TestCore::new();
    let loader: Arc<dyn AdapterLoader> = Arc::new(MemoryLoader);
    t.handles.insert(loader);
    t.start(&Queue, config).await.unwrap();
    t
}

fn binding(id: &str, function_id: &str, config: Value) -> Binding {
    Binding {
        id: id.into(),
        trigger_type: "durable:subscriber".into(),
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

fn bind(t: &TestCore, id: &str, function_id: &str, config: Value) -> Result<(), ErrorBody> {
    let mut sends = Vec::new();
    t.core
        .triggers()
        .upsert(binding(id, function_id, config), &mut sends)
}

/// A function that fails its first `failures` calls, recording every input.
fn flaky(t: &TestCore, id: &str, failures: u32) -> Arc<parking_lot::Mutex<Vec<Value>>> {
    let log: Arc<parking_lot::Mutex<Vec<Value>>> = Arc::default();
    let seen = log.clone();
    let calls = Arc::new(AtomicU32::new(0));
    let mut reg = Registrar::new(&t.core, "test-worker");
    reg.function(FunctionSpec::raw(id, "flaky", move |_c, _ctx, v| {
        seen.lock().push(v);
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err(ErrorBody::new("boom", format!("failure {}", n + 1)))
            } else {
                Ok(Value::Null)
            }
        }
    }));
    log
}

#[tokio::test]
async fn publish_gives_every_subscribed_function_its_own_copy() {
    let t = queue_core("").await;
    let a = t.recorder("a::handle", Value::Null);
    let b = t.recorder("b::handle", Value::Null);
    let other = t.recorder("c::handle", Value::Null);
    bind(&t, "t1", "a::handle", json!({"topic": "orders"})).unwrap();
    bind(&t, "t2", "b::handle", json!({"topic": "orders"})).unwrap();
    // A second binding of the same function competes for the same copy.
    bind(&t, "t3", "a::handle", json!({"topic": "orders"})).unwrap();
    bind(&t, "t4", "c::handle", json!({"topic": "other"})).unwrap();
    for n in 0..5 {
        t.call(
            "iii::durable::publish",
            json!({"topic": "orders", "data": {"n": n}}),
        )
        .await
        .unwrap();
    }
    assert_eq!(TestCore::wait_for(&a, 5, 2000).await.len(), 5);
    assert_eq!(TestCore::wait_for(&b, 5, 2000).await.len(), 5);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(a.lock().len(), 5, "competing bindings share one copy");
    assert!(
        other.lock().is_empty(),
        "another topic's subscriber gets nothing"
    );
    let stats = t
        .call("engine::queue::topic_stats", json!({"topic": "orders"}))
        .await
        .unwrap();
    assert_eq!(stats["depth"], 0);
    assert_eq!(stats["consumer_count"], 3);
}

#[tokio::test]
async fn publish_without_a_topic_is_topic_not_set() {
    let t = queue_core("").await;
    let e = t
        .call("iii::durable::publish", json!({"data": 1}))
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::TOPIC_NOT_SET);
}

#[tokio::test]
async fn failures_retry_then_dead_letter_and_redrive_delivers_again() {
    let t = queue_core("").await;
    let log = flaky(&t, "w::job", 2);
    bind(
        &t,
        "t1",
        "w::job",
        json!({"topic": "jobs",
        "queue_config": {"maxRetries": 1, "backoffDelayMs": 10}}),
    )
    .unwrap();
    t.call(
        "iii::durable::publish",
        json!({"topic": "jobs", "data": {"k": 1}}),
    )
    .await
    .unwrap();
    assert_eq!(TestCore::wait_for(&log, 2, 2000).await.len(), 2);
    // Two attempts (maxRetries 1) failed: the message is a dead letter now.
    let mut dlq = Value::Null;
    for _ in 0..100 {
        dlq = t
            .call("engine::queue::dlq_messages", json!({"topic": "jobs"}))
            .await
            .unwrap();
        if dlq.as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let dlq = dlq.as_array().unwrap().clone();
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0]["payload"], json!({"k": 1}));
    assert_eq!(dlq[0]["retries"], 2);
    assert_eq!(dlq[0]["error"], "failure 2");
    let topics = t
        .call("engine::queue::dlq_topics", json!({}))
        .await
        .unwrap();
    assert_eq!(
        topics,
        json!([{"topic": "jobs", "broker_type": "builtin", "message_count": 1}])
    );
    let r = t
        .call("iii::queue::redrive", json!({"queue": "jobs"}))
        .await
        .unwrap();
    assert_eq!(r, json!({"queue": "jobs", "redriven": 1}));
    assert_eq!(
        TestCore::wait_for(&log, 3, 2000).await.len(),
        3,
        "the redriven message runs again"
    );
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let stats = t
        .call("engine::queue::topic_stats", json!({"topic": "jobs"}))
        .await
        .unwrap();
    assert_eq!(
        (stats["depth"].as_u64(), stats["dlq_depth"].as_u64()),
        (Some(0), Some(0))
    );
}

#[tokio::test]
async fn discard_and_redrive_message_act_on_one_dead_letter() {
    let t = queue_core("").await;
    let _log = flaky(&t, "w::job", 100);
    bind(
        &t,
        "t1",
        "w::job",
        json!({"topic": "jobs", "queue_config": {"maxRetries": 0}}),
    )
    .unwrap();
    for n in 0..2 {
        t.call("iii::durable::publish", json!({"topic": "jobs", "data": n}))
            .await
            .unwrap();
    }
    let mut dlq = Vec::new();
    for _ in 0..200 {
        dlq = t
            .call("engine::queue::dlq_messages", json!({"topic": "jobs"}))
            .await
            .unwrap()
            .as_array()
            .cloned()
            .unwrap_or_default();
        if dlq.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(dlq.len(), 2);
    let id = dlq[0]["id"].as_str().unwrap().to_string();
    let r = t
        .call(
            "iii::queue::discard_message",
            json!({"queue": "jobs", "message_id": id}),
        )
        .await
        .unwrap();
    assert_eq!(r["redriven"], 1);
    let r = t
        .call(
            "iii::queue::discard_message",
            json!({"queue": "jobs", "message_id": id}),
        )
        .await
        .unwrap();
    assert_eq!(r["redriven"], 0, "already gone");
    let e = t
        .call("iii::queue::redrive_message", json!({"queue": "jobs"}))
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::MESSAGE_ID_NOT_SET);
    let e = t.call("iii::queue::redrive", json!({})).await.unwrap_err();
    assert_eq!(e.code, codes::QUEUE_NOT_SET);
}

#[tokio::test]
async fn enqueue_runs_the_function_later_and_refuses_an_unknown_queue() {
    let t = queue_core("queue_configs:\n  payment:\n    max_retries: 2\n").await;
    let log = t.recorder("pay::process", Value::Null);
    let r = t
        .call(
            iii_protocol::ids::functions::QUEUE_ENQUEUE,
            json!({"queue": "payment",
            "function_id": "pay::process", "data": {"amount": 100}, "messageReceiptId": "r-1"}),
        )
        .await
        .unwrap();
    assert_eq!(r, json!({"messageReceiptId": "r-1"}));
    assert_eq!(
        TestCore::wait_for(&log, 1, 2000).await,
        vec![json!({"amount": 100})]
    );
    let e = t
        .call(
            iii_protocol::ids::functions::QUEUE_ENQUEUE,
            json!({"queue": "nope",
            "function_id": "pay::process", "data": {}}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, codes::ENQUEUE_ERROR);
    assert!(
        e.message.contains("Queue 'nope' not found"),
        "{}",
        e.message
    );
    // The default queue always exists.
    t.call(
        iii_protocol::ids::functions::QUEUE_ENQUEUE,
        json!({"queue": "default",
        "function_id": "pay::process", "data": 2}),
    )
    .await
    .unwrap();
    assert_eq!(TestCore::wait_for(&log, 2, 2000).await.len(), 2);
}

#[tokio::test]
async fn a_fifo_queue_needs_its_group_field() {
    let e = TestCore::new()
        .start(&Queue, "queue_configs:\n  ordered:\n    type: fifo\n")
        .await
        .unwrap_err();
    assert!(e.contains("message_group_field"), "{e}");
    let t = queue_core(
        "queue_configs:\n  ordered:\n    type: fifo\n    message_group_field: customer\n",
    )
    .await;
    let e = t
        .call(
            iii_protocol::ids::functions::QUEUE_ENQUEUE,
            json!({"queue": "ordered",
            "function_id": "f", "data": {"x": 1}}),
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("`customer`"), "{}", e.message);
}

#[tokio::test]
async fn fifo_subscribers_keep_order_per_group_with_concurrency() {
    let t = queue_core("").await;
    let log: Arc<parking_lot::Mutex<Vec<Value>>> = Arc::default();
    let seen = log.clone();
    let mut reg = Registrar::new(&t.core, "test-worker");
    reg.function(FunctionSpec::raw(
        "w::ordered",
        "slow",
        move |_c, _ctx, v| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                seen.lock().push(v);
                Ok(Value::Null)
            }
        },
    ));
    bind(
        &t,
        "t1",
        "w::ordered",
        json!({"topic": "o",
        "queue_config": {"type": "fifo", "concurrency": 4}}),
    )
    .unwrap();
    for n in 0..20 {
        t.call("iii::durable::publish", json!({"topic": "o", "data": n}))
            .await
            .unwrap();
    }
    let got = TestCore::wait_for(&log, 20, 5000).await;
    let want: Vec<Value> = (0..20).map(|n| json!(n)).collect();
    assert_eq!(
        got, want,
        "topic publishes form one group, delivered in order"
    );
}

#[tokio::test]
async fn unsubscribing_one_binding_leaves_the_others() {
    let t = queue_core("").await;
    let a = t.recorder("a::h", Value::Null);
    let b = t.recorder("b::h", Value::Null);
    bind(&t, "ta", "a::h", json!({"topic": "t"})).unwrap();
    bind(&t, "tb", "b::h", json!({"topic": "t"})).unwrap();
    let _ = t.core.triggers().unregister("ta");
    t.call("iii::durable::publish", json!({"topic": "t", "data": 1}))
        .await
        .unwrap();
    assert_eq!(TestCore::wait_for(&b, 1, 2000).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    assert!(a.lock().is_empty());
}

#[tokio::test]
async fn messages_published_before_any_subscriber_go_to_the_first_one() {
    let t = queue_core("").await;
    t.call(
        "iii::durable::publish",
        json!({"topic": "early", "data": "x"}),
    )
    .await
    .unwrap();
    let topics = t
        .call("engine::queue::list_topics", json!({}))
        .await
        .unwrap();
    assert!(
        topics
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "early"),
        "{topics}"
    );
    let a = t.recorder("a::h", Value::Null);
    bind(&t, "ta", "a::h", json!({"topic": "early"})).unwrap();
    assert_eq!(TestCore::wait_for(&a, 1, 2000).await, vec![json!("x")]);
}

#[tokio::test]
async fn a_binding_without_topic_or_with_a_bad_queue_config_is_refused() {
    let t = queue_core("").await;
    let e = bind(&t, "t1", "f", json!({})).unwrap_err();
    assert!(e.message.contains("topic"), "{}", e.message);
    let e = bind(
        &t,
        "t2",
        "f",
        json!({"topic": "x", "queue_config": {"concurrency": 0}}),
    )
    .unwrap_err();
    assert!(e.message.contains("concurrency"), "{}", e.message);
}

#[tokio::test]
async fn a_false_condition_acks_without_calling() {
    let t = queue_core("").await;
    let _cond = t.recorder("cond::no", json!(false));
    let h = t.recorder("h::h", Value::Null);
    bind(
        &t,
        "t1",
        "h::h",
        json!({"topic": "c", "condition_function_id": "cond::no"}),
    )
    .unwrap();
    t.call("iii::durable::publish", json!({"topic": "c", "data": 1}))
        .await
        .unwrap();
    for _ in 0..100 {
        let s = t
            .call("engine::queue::topic_stats", json!({"topic": "c"}))
            .await
            .unwrap();
        if s["depth"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let s = t
        .call("engine::queue::topic_stats", json!({"topic": "c"}))
        .await
        .unwrap();
    assert_eq!(s["depth"], 0);
    assert!(h.lock().is_empty());
}

#[tokio::test]
async fn a_message_waits_for_its_function_instead_of_burning_attempts() {
    let t = queue_core("queue_configs:\n  once:\n    max_retries: 1\n").await;
    t.call(
        iii_protocol::ids::functions::QUEUE_ENQUEUE,
        json!({"queue": "once",
        "function_id": "late::fn", "data": 9}),
    )
    .await
    .unwrap();
    // Longer than one retry interval: with the attempt counted it would be dead by now.
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let log = t.recorder("late::fn", Value::Null);
    assert_eq!(TestCore::wait_for(&log, 1, 3000).await, vec![json!(9)]);
    let dlq = t
        .call("engine::queue::dlq_messages", json!({"topic": "once"}))
        .await
        .unwrap();
    assert_eq!(dlq, json!([]));
}
