//! Figures of the policies written in Python (componentize-py) and JavaScript
//! (componentize-js), printed as a table (not a test; no assertions).
//!
//! `cargo bench -p iii-plugin-host --bench lang_policy_bench`
//!
//! For each component:
//! * cold start: load with an empty compile cache (Cranelift compiles the whole interpreter)
//!   plus the first instantiation, what the first engine start on a machine pays;
//! * warm start: the same with the compile cache filled (a new host, as after a restart);
//! * a fresh instance from the `InstancePre` (what every call pays before running guest code);
//! * one call of each decision, instance creation included (policies run per call).
//!
//! The components come from `plugins/policies/build-lang.sh` (`$III_LANG_POLICIES`, or the
//! script is run first).

#[path = "../tests/all/lang_fixtures.rs"]
mod lang_fixtures;

use std::time::{Duration, Instant};

use iii_adapter_api::policy::{Connection, HttpRequest, Invocation, RegistrationKind};
use iii_plugin_host::{AdapterSpec, CacheOutcome, ComponentPolicy, HostConfig, PluginHost};
use serde_json::{json, Value};

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// `(p50, p99)` of `n` runs of `f` after `n / 10` warm-up runs.
async fn timed<F, Fut>(n: usize, mut f: F) -> (Duration, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..n / 10 {
        f().await;
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f().await;
        v.push(t.elapsed());
    }
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    (at(0.50), at(0.99))
}

fn host(cache: &std::path::Path) -> PluginHost {
    PluginHost::new(HostConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..HostConfig::default()
    })
    .expect("host")
}

/// Load + first instantiation on `host`: `(elapsed, cache outcome, policy)`.
async fn start(
    host: &PluginHost,
    spec: &AdapterSpec,
) -> (Duration, CacheOutcome, std::sync::Arc<ComponentPolicy>) {
    let t = Instant::now();
    let p = host.load_component_policy(spec).expect("load");
    p.instantiate().await.expect("first instance");
    (t.elapsed(), p.compile_cache(), p)
}

struct Lang {
    name: &'static str,
    config: Value,
    conn: Connection,
    call: Invocation,
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    const N: usize = 2_000;
    let langs = [
        Lang {
            name: "python-allowlist",
            config: json!({"keys": {"k-shop": {"namespaces": {"shop": ["*"]}}}, "deny": ["admin::*"]}),
            conn: Connection {
                headers: vec![("x-api-key".into(), "k-shop".into())],
                ..Connection::default()
            },
            call: Invocation {
                function_id: "shop::buy".into(),
                payload: json!({"order": 7, "lines": [1, 2, 3]}),
                ..Invocation::default()
            },
        },
        Lang {
            name: "js-tenant",
            config: json!({"tokens": {"tok-acme": "acme"}}),
            conn: Connection {
                headers: vec![("authorization".into(), "Bearer tok-acme".into())],
                ..Connection::default()
            },
            call: Invocation {
                function_id: "acme::orders".into(),
                payload: json!({"order": 7, "lines": [1, 2, 3]}),
                context: json!({"tenant": "acme"}),
                ..Invocation::default()
            },
        },
    ];

    println!("\n## policies in Python and JavaScript (per-call instances)\n");
    println!("| policy | .wasm | cold start (compile + 1st instance) | warm start (cached code + 1st instance) |");
    println!("|---|---:|---:|---:|");
    let mut loaded = Vec::new();
    for lang in &langs {
        let path = lang_fixtures::lang_policy(lang.name);
        let size = std::fs::metadata(&path).expect("wasm").len();
        let Value::Object(config) = lang.config.clone() else {
            unreachable!()
        };
        let spec = AdapterSpec::path(&path).with_config(config);
        let cache = tempfile::tempdir().expect("tempdir");
        let (cold, outcome, _) = start(&host(cache.path()), &spec).await;
        assert_eq!(outcome, CacheOutcome::Miss);
        let mut warm = Vec::new();
        let mut last = None;
        for _ in 0..5 {
            let h = host(cache.path());
            let (t, outcome, p) = start(&h, &spec).await;
            assert_eq!(outcome, CacheOutcome::Hit);
            warm.push(t);
            last = Some((h, p));
        }
        warm.sort();
        println!(
            "| {} | {:.1} MiB | {} | {} |",
            lang.name,
            size as f64 / (1024.0 * 1024.0),
            ms(cold),
            ms(warm[warm.len() / 2])
        );
        loaded.push((lang, last.expect("loaded"), cache));
    }

    println!("\n| policy | measurement | p50 | p99 |");
    println!("|---|---|---:|---:|");
    let request = HttpRequest {
        method: "GET".into(),
        headers: vec![
            ("x-api-key".into(), "k-shop".into()),
            ("authorization".into(), "Bearer tok-acme".into()),
        ],
        ..HttpRequest::default()
    };
    let registration = json!({"function_id": "shop::buy", "namespace": "default"});
    for (lang, (_host, p), _cache) in &loaded {
        let row = |what: &str, (p50, p99): (Duration, Duration)| {
            println!("| {} | {what} | {} | {} |", lang.name, us(p50), us(p99));
        };
        row(
            "fresh instance from InstancePre",
            timed(N, || async { p.instantiate().await.expect("instance") }).await,
        );
        row(
            "on-registration → allow (instance + least work)",
            timed(N, || async {
                std::hint::black_box(
                    p.on_registration(RegistrationKind::Function, &registration)
                        .await
                        .expect("on-registration"),
                );
            })
            .await,
        );
        row(
            "authenticate (instance + call)",
            timed(N, || async {
                std::hint::black_box(p.authenticate(&lang.conn).await.expect("authenticate"));
            })
            .await,
        );
        row(
            "on-invocation (instance + call)",
            timed(N, || async {
                std::hint::black_box(p.on_invocation(&lang.call).await.expect("on-invocation"));
            })
            .await,
        );
        row(
            "on-http-request (instance + call)",
            timed(N, || async {
                std::hint::black_box(p.on_http_request(&request).await.expect("http"));
            })
            .await,
        );
    }
    println!();
}
