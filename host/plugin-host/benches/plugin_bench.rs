//! Plugin host figures, printed as a table (not a test; no assertions).
//!
//! `cargo bench -p iii-plugin-host --bench plugin_bench`
//!
//! * dispatch: a `get`/`set` on the embedded kv component (in memory, no
//!   backend I/O), through `Arc<dyn StateStore>` as services call it, against
//!   the same operation on an in-process Rust map;
//! * policy: a fresh Extism instance from its `InstancePre`, and a full call;
//! * policy world: the `bearer` component policy (instantiation alone, a call that
//!   instantiates inline, a call on the instance made ahead) and the Extism `rate-limit` policy
//!   through `Arc<dyn Policy>`, as the policies service calls them;
//! * queue: one message through the embedded queue component (enqueue →
//!   lease → ack, three calls) on a data dir, with and without fdatasync;
//! * cold load of the embedded kv plugin with and without the compile cache.

#[path = "../tests/all/fixtures.rs"]
#[expect(
    dead_code,
    reason = "the bench needs only the policy fixtures, not the components"
)]
mod fixtures;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::Arc;

use iii_adapter_api::policy::{Connection, Invocation, Policy};
use iii_adapter_api::queue::{LeaseRequest, NewMessage};
use iii_plugin_host::policy::PolicySpec;
use iii_plugin_host::{AdapterSpec, CacheOutcome, HostConfig, PluginHost, QueueWorld, StateWorld};
use parking_lot::Mutex;
use serde_json::{json, Value};

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    Stats {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn us(d: Duration) -> String {
    format!("{:.2} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn row(what: &str, s: &Stats, note: &str) {
    println!(
        "| {what:<46} | {:>12} | {:>12} | {note} |",
        us(s.p50),
        us(s.p99)
    );
}

async fn timed<F, Fut>(n: usize, mut f: F) -> Stats
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for i in 0..n / 10 {
        f(i).await;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        f(i).await;
        out.push(t.elapsed());
    }
    stats(out)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    const N: usize = 20_000;
    let host = PluginHost::new(HostConfig::default()).expect("host");
    let kv = iii_plugin_host::load::<StateWorld>(&host, &AdapterSpec::named("kv"))
        .await
        .expect("kv");
    let value = json!({"name": "ada", "n": 1});
    kv.set("bench", "k", &value).await.expect("set");
    let map: Mutex<HashMap<(String, String), Value>> = Mutex::new(HashMap::new());
    map.lock()
        .insert(("bench".into(), "k".into()), value.clone());

    println!("\n## iii plugin host\n");
    println!("| measurement | p50 | p99 | note |");
    println!("|---|---:|---:|---|");

    let comp_get = timed(N, |_| {
        let kv = &kv;
        async move {
            std::hint::black_box(kv.get("bench", "k").await.expect("get"));
        }
    })
    .await;
    let map_get = timed(N, |_| {
        let map = &map;
        async move {
            let k = ("bench".to_string(), "k".to_string());
            std::hint::black_box(map.lock().get(&k).cloned());
        }
    })
    .await;
    row("kv component get (small JSON value)", &comp_get, "");
    row("in-process map get (same value)", &map_get, "");
    let over = comp_get.p50.saturating_sub(map_get.p50);
    println!(
        "| {:<46} | {:>12} | {:>12} | ratio {:.1}x, target overhead ≤ 1 µs |",
        "  => get dispatch overhead",
        us(over),
        "",
        comp_get.p50.as_secs_f64() / map_get.p50.as_secs_f64().max(1e-9)
    );

    // The floor of one component call: no arguments, an empty list back.
    let empty = iii_plugin_host::load::<StateWorld>(&host, &AdapterSpec::named("kv"))
        .await
        .expect("kv");
    let floor = timed(N, |_| {
        let kv = &empty;
        async move {
            std::hint::black_box(kv.list_groups().await.expect("list_groups"));
        }
    })
    .await;
    row(
        "kv component list_groups on empty store",
        &floor,
        "call floor: lock, deadline, fiber, lift",
    );

    let comp_set = timed(N, |i| {
        let kv = &kv;
        let v = json!({"i": i});
        async move {
            std::hint::black_box(kv.set("bench", "s", &v).await.expect("set"));
        }
    })
    .await;
    let map_set = timed(N, |i| {
        let map = &map;
        let v = json!({"i": i});
        async move {
            let old = map.lock().insert(("bench".into(), "s".into()), v.clone());
            std::hint::black_box((old, v));
        }
    })
    .await;
    row("kv component set (in memory, no fsync)", &comp_set, "");
    row("in-process map insert (same value)", &map_set, "");
    println!(
        "| {:<46} | {:>12} | {:>12} | ratio {:.1}x |",
        "  => set dispatch overhead",
        us(comp_set.p50.saturating_sub(map_set.p50)),
        "",
        comp_set.p50.as_secs_f64() / map_set.p50.as_secs_f64().max(1e-9)
    );

    // Durable set: fsync per write dominates; shown for scale.
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = iii_plugin_host::load::<StateWorld>(
        &host,
        &AdapterSpec::named("kv").with_grants(iii_plugin_host::Grants {
            data_dir: Some(dir.path().to_path_buf()),
            ..Default::default()
        }),
    )
    .await
    .expect("durable kv");
    let dur_set = timed(500, |i| {
        let kv = &durable;
        let v = json!({"i": i});
        async move {
            kv.set("bench", "d", &v).await.expect("set");
        }
    })
    .await;
    row(
        "kv component set, durable (WAL + fdatasync)",
        &dur_set,
        "disk-bound",
    );

    // Queue round trips on a data dir, three calls per message: two logged changes (enqueue,
    // ack; a lease is not logged), each fdatasynced or not.
    for (fsync, n) in [(true, 300), (false, 5_000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = serde_json::Map::new();
        config.insert("fsync".into(), json!(fsync));
        let q = iii_plugin_host::load::<QueueWorld>(
            &host,
            &AdapterSpec::named("queue")
                .with_config(config)
                .with_grants(iii_plugin_host::Grants {
                    data_dir: Some(dir.path().to_path_buf()),
                    ..Default::default()
                }),
        )
        .await
        .expect("durable queue");
        let req = LeaseRequest {
            max: 1,
            lease_ms: 30_000,
            fifo: false,
        };
        let started = Instant::now();
        let round = timed(n, |i| {
            let q = &q;
            let msg = NewMessage {
                id: format!("m{i}-{fsync}"),
                payload: json!({"order": i, "sku": "abc-123"}),
                meta: json!({"function_id": "orders::ship"}),
                group: None,
                max_attempts: 3,
                delay_ms: 0,
            };
            async move {
                q.enqueue("bench", &msg).await.expect("enqueue");
                let d = q.lease("bench", req).await.expect("lease").deliveries;
                assert!(q.ack("bench", &d[0].token).await.expect("ack"));
            }
        })
        .await;
        // `timed` also ran n/10 warm-up rounds.
        let per_sec = (n + n / 10) as f64 / started.elapsed().as_secs_f64();
        row(
            &format!("queue enqueue→lease→ack, fsync: {fsync}"),
            &round,
            &format!("{per_sec:.0} messages/s, one at a time"),
        );
    }

    // Policy instances.
    let mut spec = PolicySpec::new(fixtures::policy());
    spec.config.insert("allowed_roles".into(), "admin".into());
    let policy = host.load_policy(&spec).expect("policy");
    let inst = timed(2_000, |_| {
        let p = &policy;
        async move { p.instantiate().await.expect("instantiate") }
    })
    .await;
    row("policy instance from InstancePre", &inst, "target ≤ 50 µs");
    let input = json!({"role": "admin"});
    let call = timed(2_000, |_| {
        let p = &policy;
        let input = &input;
        async move {
            std::hint::black_box(p.call("check", input).await.expect("call"));
        }
    })
    .await;
    row("policy call (instance + JSON in/out)", &call, "");

    // Policies of world iii:policy@0.1.0, as the policies service runs them.
    let ex = fixtures::examples();
    // A scheduling stall on a shared machine must not abort the run: the figures are
    // latencies, the deadline is tested elsewhere.
    let generous = iii_plugin_host::Grants {
        deadline_ms: Some(5_000),
        ..Default::default()
    };
    let Value::Object(tokens) = json!({"tokens": ["t1", "t2", "t3"]}) else {
        unreachable!()
    };
    let bearer = host
        .load_component_policy(
            &AdapterSpec::path(&ex.bearer)
                .with_config(tokens.clone())
                .with_grants(generous.clone()),
        )
        .expect("bearer");
    let inst = timed(5_000, |_| {
        let p = &bearer;
        async move { p.instantiate().await.expect("instantiate") }
    })
    .await;
    row(
        "component policy instantiation (Store + instance, dropped)",
        &inst,
        "target ≤ 50 µs; hidden from calls by the instance made ahead",
    );
    let conn = Connection {
        headers: vec![("authorization".into(), "Bearer t3".into())],
        query_params: Vec::new(),
        ip_address: "127.0.0.1".into(),
    };
    // Back to back on one thread: the background refill never gets to run, so every call
    // instantiates inline (the worst case: a burst).
    let inline = timed(5_000, |_| {
        let p = &bearer;
        let conn = &conn;
        async move {
            std::hint::black_box(p.authenticate(conn).await.expect("authenticate"));
        }
    })
    .await;
    row(
        "component policy call, none ready (instantiate + call + drop)",
        &inline,
        "bearer example, back to back",
    );
    // With the gap real calls have: the next instance is made (untimed) before each call.
    let mut lat = Vec::with_capacity(5_000);
    for i in 0..5_500 {
        bearer.prepare_next().await;
        let t = Instant::now();
        std::hint::black_box(bearer.authenticate(&conn).await.expect("authenticate"));
        if i >= 500 {
            lat.push(t.elapsed());
        }
    }
    row(
        "component policy call, instance made ahead (call + drop)",
        &stats(lat),
        "target ≤ 20 µs; what a call pays",
    );
    let Value::Object(limits) = json!({"limit": 1_000_000_000u64, "window_ms": 3_600_000}) else {
        unreachable!()
    };
    let limiter: Arc<dyn Policy> = host
        .load_policy_spec(
            &AdapterSpec::path(&ex.rate_limit)
                .with_config(limits)
                .with_grants(generous),
        )
        .expect("rate-limit");
    let invocation = Invocation {
        function_id: "svc::x".into(),
        namespace: "default".into(),
        payload: json!({"n": 1}),
        action: Value::Null,
        context: json!({"sub": "ada"}),
        metadata: None,
    };
    let ext = timed(5_000, |_| {
        let p = &limiter;
        let c = &invocation;
        async move {
            std::hint::black_box(p.on_invocation(c).await.expect("on_invocation"));
        }
    })
    .await;
    row(
        "Extism policy call (rate-limit on_invocation)",
        &ext,
        "instance + JSON + var get/set",
    );

    // Cold loads of the embedded kv plugin.
    println!(
        "\n| cold load of embedded kv (compile/deserialize + instantiate + init) | median | note |"
    );
    println!("|---|---:|---|");
    let mut nocache = Vec::new();
    for _ in 0..3 {
        let h = PluginHost::new(HostConfig::default()).expect("host");
        let t = Instant::now();
        let a = h
            .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
            .await
            .expect("load");
        nocache.push(t.elapsed());
        assert_eq!(a.compile_cache(), CacheOutcome::Disabled);
    }
    let cache_dir = tempfile::tempdir().expect("tempdir");
    let cfg = HostConfig {
        cache_dir: Some(cache_dir.path().to_path_buf()),
        ..HostConfig::default()
    };
    let t = Instant::now();
    PluginHost::new(cfg.clone())
        .expect("host")
        .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
        .await
        .expect("load");
    let first = t.elapsed();
    let mut cached = Vec::new();
    for _ in 0..10 {
        // A new host each time: what an engine restart pays.
        let h = PluginHost::new(cfg.clone()).expect("host");
        let t = Instant::now();
        let a = h
            .load_adapter::<StateWorld>(&AdapterSpec::named("kv"))
            .await
            .expect("load");
        cached.push(t.elapsed());
        assert_eq!(a.compile_cache(), CacheOutcome::Hit);
    }
    nocache.sort();
    cached.sort();
    println!(
        "| without compile cache (Cranelift every time) | {} | |",
        ms(nocache[nocache.len() / 2])
    );
    println!(
        "| with cache, first load (compile + store) | {} | |",
        ms(first)
    );
    println!(
        "| with warm cache (deserialize) | {} | target ≤ 10 ms |",
        ms(cached[cached.len() / 2])
    );
    println!();
}
