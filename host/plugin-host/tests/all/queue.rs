//! The embedded queue adapter (`plugins/queue`), called through the host's `QueueStore`.

use crate::{host, tempdir};

use std::path::Path;
use std::sync::Arc;

use iii_adapter_api::queue::{LeaseRequest, NackOutcome, NewMessage, QueueStats};
use iii_plugin_host::{Adapter, AdapterSpec, Grants, PluginError, QueueStore, QueueWorld};
use serde_json::{json, Map, Value};

fn durable(dir: &Path) -> AdapterSpec {
    AdapterSpec::named("queue").with_grants(Grants {
        data_dir: Some(dir.to_path_buf()),
        ..Grants::default()
    })
}

async fn queue(spec: &AdapterSpec) -> Arc<Adapter<QueueWorld>> {
    host()
        .load_adapter::<QueueWorld>(spec)
        .await
        .expect("load queue")
}

fn msg(id: &str, payload: Value, max_attempts: u32) -> NewMessage {
    NewMessage {
        id: id.into(),
        payload,
        meta: json!({"function_id": "svc::handle", "traceparent": "00-abc-def-01"}),
        group: None,
        max_attempts,
        delay_ms: 0,
    }
}

const ALL: LeaseRequest = LeaseRequest {
    max: 100,
    lease_ms: 60_000,
    fifo: false,
};

fn ids(l: &iii_adapter_api::queue::Leased) -> Vec<&str> {
    l.deliveries.iter().map(|d| d.message_id.as_str()).collect()
}

/// Offsets of every record in the log (by walking the headers).
fn record_offsets(log: &Path) -> Vec<u64> {
    let bytes = std::fs::read(log).unwrap();
    let mut at = 8;
    let mut out = Vec::new();
    while at + 12 <= bytes.len() {
        out.push(at as u64);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    out
}

/// The whole delivery contract once, through the trait object a service would hold.
async fn contract(q: Arc<dyn QueueStore>) {
    let payload = json!({"order": 7, "name": "ünïcode ✓"});
    q.enqueue("jobs", &msg("a", payload.clone(), 2))
        .await
        .unwrap();
    q.enqueue("jobs", &msg("a", json!("dup"), 2)).await.unwrap();
    q.enqueue("jobs", &msg("b", json!(2), 1)).await.unwrap();
    let l = q.lease("jobs", ALL).await.unwrap();
    assert_eq!(ids(&l), ["a", "b"], "a repeated id is stored once");
    let (a, b) = (&l.deliveries[0], &l.deliveries[1]);
    assert_eq!(a.payload, payload);
    assert_eq!(a.meta["function_id"], "svc::handle");
    assert_eq!((a.attempt, a.max_attempts), (1, 2));
    assert_eq!(
        q.stats("jobs").await.unwrap(),
        QueueStats {
            waiting: 0,
            in_flight: 2,
            dead: 0
        }
    );
    assert!(q.lease("jobs", ALL).await.unwrap().deliveries.is_empty());

    assert_eq!(
        q.nack("jobs", &a.token, 0, "try again").await.unwrap(),
        NackOutcome::Retrying
    );
    assert_eq!(
        q.nack("jobs", &a.token, 0, "late").await.unwrap(),
        NackOutcome::Stale
    );
    assert_eq!(
        q.nack("jobs", &b.token, 0, "b broke").await.unwrap(),
        NackOutcome::DeadLettered
    );
    let a2 = q.lease("jobs", ALL).await.unwrap().deliveries.remove(0);
    assert_eq!((a2.message_id.as_str(), a2.attempt), ("a", 2));
    assert!(q.ack("jobs", &a2.token).await.unwrap());
    assert!(
        !q.ack("jobs", &a2.token).await.unwrap(),
        "a second ack is stale"
    );

    let dead = q.dead_letters("jobs", 0, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].error.as_str()),
        ("b", "b broke")
    );
    assert_eq!((dead[0].attempts, dead[0].payload.clone()), (1, json!(2)));
    assert!(
        dead[0].failed_at_ms > 1_600_000_000_000,
        "wall-clock milliseconds"
    );
    assert_eq!(q.queues().await.unwrap(), ["jobs"]);
    assert_eq!(q.redrive("jobs", Some("b")).await.unwrap(), 1);
    let b2 = q.lease("jobs", ALL).await.unwrap().deliveries.remove(0);
    assert_eq!(
        (b2.message_id.as_str(), b2.attempt),
        ("b", 1),
        "a redrive resets the attempts"
    );
    q.nack("jobs", &b2.token, 0, "again").await.unwrap();
    assert!(!q.discard("jobs", "nope").await.unwrap());
    assert!(q.discard("jobs", "b").await.unwrap());
    assert_eq!(q.stats("jobs").await.unwrap(), QueueStats::default());
    assert!(q.queues().await.unwrap().is_empty());
    assert_eq!(q.stats("unknown").await.unwrap(), QueueStats::default());

    // FIFO: one message per group, a retry blocks its group.
    for (id, g) in [("a1", "a"), ("b1", "b"), ("a2", "a")] {
        let mut m = msg(id, json!(id), 3);
        m.group = Some(g.into());
        q.enqueue("fifo", &m).await.unwrap();
    }
    let fifo = LeaseRequest { fifo: true, ..ALL };
    let l = q.lease("fifo", fifo).await.unwrap();
    assert_eq!(ids(&l), ["a1", "b1"]);
    q.nack("fifo", &l.deliveries[0].token, 30_000, "later")
        .await
        .unwrap();
    let l = q.lease("fifo", fifo).await.unwrap();
    assert!(l.deliveries.is_empty(), "a2 must not overtake a1's retry");
    let due = l
        .next_due_ms
        .expect("the retry and the lease are due later");
    assert!(due > 20_000 && due <= 30_000, "{due}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_contract_in_memory_and_on_disk() {
    contract(
        iii_plugin_host::load::<QueueWorld>(&host(), &AdapterSpec::named("queue"))
            .await
            .unwrap(),
    )
    .await;
    let dir = tempdir();
    contract(queue(&durable(dir.path())).await).await;
    assert!(dir.path().join("queue.wal").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_survive_a_reload_and_leases_in_flight_come_back() {
    let dir = tempdir();
    {
        let q = queue(&durable(dir.path())).await;
        for i in 0..4 {
            q.enqueue("q", &msg(&format!("m{i}"), json!({"i": i}), 3))
                .await
                .unwrap();
        }
        let mut delayed = msg("later", json!("x"), 3);
        delayed.delay_ms = 3_600_000;
        q.enqueue("q", &delayed).await.unwrap();
        let l = q.lease("q", LeaseRequest { max: 3, ..ALL }).await.unwrap();
        assert!(q.ack("q", &l.deliveries[0].token).await.unwrap()); // m0 done
        q.nack("q", &l.deliveries[1].token, 0, "x").await.unwrap(); // m1: attempt 1
                                                                    // m2 stays leased when the adapter goes away.
    }
    let q = queue(&durable(dir.path())).await;
    assert_eq!(
        q.stats("q").await.unwrap(),
        QueueStats {
            waiting: 4,
            in_flight: 0,
            dead: 0
        },
        "every lease ended with the old instance"
    );
    let l = q.lease("q", ALL).await.unwrap();
    assert_eq!(
        ids(&l),
        ["m1", "m2", "m3"],
        "the delayed message is still delayed"
    );
    assert_eq!(l.deliveries[0].attempt, 2, "m1's failed attempt was kept");
    assert_eq!(l.deliveries[1].payload, json!({"i": 2}));
    for d in &l.deliveries {
        assert!(q.ack("q", &d.token).await.unwrap());
    }
    let l = q.lease("q", ALL).await.unwrap();
    assert!(l.deliveries.is_empty());
    assert!(l.next_due_ms.unwrap() > 3_500_000, "{:?}", l.next_due_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_and_earlier_messages_kept() {
    let dir = tempdir();
    let log = dir.path().join("queue.wal");
    {
        let q = queue(&durable(dir.path())).await;
        q.enqueue("q", &msg("a", json!(1), 1)).await.unwrap();
        q.enqueue("q", &msg("b", json!(2), 1)).await.unwrap();
    }
    let intact = std::fs::metadata(&log).unwrap().len();
    // The first half of a copy of the last record: a write torn by a crash.
    let mut bytes = std::fs::read(&log).unwrap();
    let last = bytes[*record_offsets(&log).last().unwrap() as usize..].to_vec();
    bytes.extend_from_slice(&last[..last.len() / 2]);
    std::fs::write(&log, &bytes).unwrap();
    {
        let q = queue(&durable(dir.path())).await;
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            intact,
            "torn tail cut off"
        );
        q.enqueue("q", &msg("c", json!(3), 1)).await.unwrap();
    }
    let q = queue(&durable(dir.path())).await;
    assert_eq!(ids(&q.lease("q", ALL).await.unwrap()), ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_log_damage_is_refused_with_the_offset_and_salvage_keeps_the_rest() {
    let dir = tempdir();
    let log = dir.path().join("queue.wal");
    {
        let q = queue(&durable(dir.path())).await;
        for i in 0..5 {
            q.enqueue("q", &msg(&format!("m{i}"), json!("payload"), 1))
                .await
                .unwrap();
        }
    }
    let offs = record_offsets(&log);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes[offs[1] as usize + 30] ^= 0x20;
    std::fs::write(&log, &bytes).unwrap();

    let err = host()
        .load_adapter::<QueueWorld>(&durable(dir.path()))
        .await
        .err()
        .expect("mid-log damage must refuse to start");
    let text = err.to_string();
    assert!(matches!(err, PluginError::Init { .. }), "{err:?}");
    assert!(text.contains("queue.wal"), "{text}");
    assert!(text.contains(&format!("byte offset {}", offs[1])), "{text}");
    assert!(text.contains("3 valid records follow"), "{text}");
    assert!(text.contains("on_corruption: salvage"), "{text}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "refusing changes nothing"
    );

    let mut cfg = Map::new();
    cfg.insert("on_corruption".into(), json!("salvage"));
    {
        let q = queue(&durable(dir.path()).with_config(cfg)).await;
        assert_eq!(
            ids(&q.lease("q", ALL).await.unwrap()),
            ["m0", "m2", "m3", "m4"]
        );
    }
    let saved: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue.wal.corrupt-"))
        .collect();
    assert_eq!(saved.len(), 1, "the original log is saved beside it");
    // The salvaged log is clean: the default policy opens it.
    let q = queue(&durable(dir.path())).await;
    assert_eq!(q.stats("q").await.unwrap().waiting, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_oversized_messages_are_refused() {
    let mut cfg = Map::new();
    cfg.insert("fsync".into(), json!("yes"));
    let err = host()
        .load_adapter::<QueueWorld>(&AdapterSpec::named("queue").with_config(cfg))
        .await
        .err()
        .expect("a bad fsync value is an init error");
    assert!(err.to_string().contains("fsync"), "{err}");

    let mut cfg = Map::new();
    cfg.insert("max_message_bytes".into(), json!(100));
    let q = queue(&AdapterSpec::named("queue").with_config(cfg)).await;
    let err = q
        .enqueue("q", &msg("big", json!("x".repeat(200)), 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max_message_bytes"), "{err}");
    assert_eq!(q.stats("q").await.unwrap(), QueueStats::default());
}
