//! `iii-bench policy`: what one middleware hop and one connection's authentication cost, in one
//! run of a release engine; prints a table.
//!
//! Every row calls the same echo function sequentially (concurrency 1) through a listener of its
//! own: the trusted listener (no middleware), a listener whose `middleware_function_id` is an SDK
//! function (a worker that calls the target itself and relays the answer), and one listener per
//! WebAssembly policy (component, Extism, Python, JavaScript) that proceeds with the payload
//! unchanged. The added latency is the row's p50 minus the no-middleware p50 of the same run.
//!
//! Policies are taken from `III_POLICY_<KIND>` (a `.wasm` path; KIND = `COMPONENT`, `EXTISM`,
//! `PYTHON`, `JS`); a missing one is reported as not built. `tests/plugins.sh` builds them.
//!
//! Authentication: connect → `workerregistered` on an RBAC listener whose `auth_function_id` is
//! an SDK function, and one whose auth is a component policy.

use super::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

/// A worker on the trusted listener serving `mw::proxy`: each middleware call becomes a call of
/// the target with the same payload, and the target's answer is relayed.
async fn start_sdk_middleware(port: u16) -> Result<()> {
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    ws.next().await;
    ws.send(Message::text(
        r#"{"type":"registerfunction","id":"mw::proxy"}"#,
    ))
    .await?;
    ws.send(Message::text(
        r#"{"type":"registerfunction","id":"auth::sdk"}"#,
    ))
    .await?;
    ws.send(Message::text(r#"{"type":"invokefunction","function_id":"engine::workers::register","data":{"name":"bench-mw","pid":1},"action":{"type":"void"}}"#)).await?;
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        // Inner call id → the middleware invocation it answers.
        let mut waiting: HashMap<String, String> = HashMap::new();
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                continue;
            };
            let reply = match v["type"].as_str() {
                Some("invokefunction") if v["function_id"] == "auth::sdk" => format!(
                    r#"{{"type":"invocationresult","invocation_id":"{}","result":{{}}}}"#,
                    v["invocation_id"].as_str().unwrap_or("")
                ),
                Some("invokefunction") => {
                    let inner = uuid::Uuid::new_v4().to_string();
                    waiting.insert(
                        inner.clone(),
                        v["invocation_id"].as_str().unwrap_or("").to_string(),
                    );
                    serde_json::json!({"type": "invokefunction", "invocation_id": inner,
                        "function_id": v["data"]["function_id"], "data": v["data"]["payload"]})
                    .to_string()
                }
                Some("invocationresult") => {
                    let Some(outer) = v["invocation_id"].as_str().and_then(|i| waiting.remove(i))
                    else {
                        continue;
                    };
                    serde_json::json!({"type": "invocationresult", "invocation_id": outer,
                        "result": v["result"]})
                    .to_string()
                }
                _ => continue,
            };
            if sink.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Sequential calls of `bench::echo` through `port`; (p50, p99).
async fn hop(port: u16, calls: usize) -> Result<(Duration, Duration)> {
    let frame = |id: &str, _i: usize| {
        format!(
            r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"bench::echo","data":{{"n":1}}}}"#
        )
    };
    // Warm-up: first instantiations, compile caches, allocator.
    load_frames(Target::Engine, port, 1, calls / 10 + 10, frame).await?;
    let mut r = load_frames(Target::Engine, port, 1, calls, frame).await?;
    Ok((pct(&mut r.lat, 0.5), pct(&mut r.lat, 0.99)))
}

/// Connect → `workerregistered` on `port`, `n` times; (p50, p99).
async fn auth(port: u16, query: &str, n: usize) -> Result<(Duration, Duration)> {
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let mut ws = connect(&format!("ws://127.0.0.1:{port}/{query}")).await?;
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no first frame")?;
        let Some(Ok(Message::Text(text))) = first else {
            bail!("connection closed before workerregistered");
        };
        if !text.as_str().contains("workerregistered") {
            bail!("refused: {}", text.as_str());
        }
        if i >= n / 10 {
            lat.push(t.elapsed());
        }
        let _ = ws.close(None).await;
    }
    Ok((pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

pub async fn bench() -> Result<()> {
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let calls = if quick { 300 } else { 3000 };
    let conns = if quick { 50 } else { 300 };
    let kinds = [
        ("component policy", "COMPONENT", "policy::component"),
        ("Extism policy", "EXTISM", "policy::extism"),
        (
            "Python policy (componentize-py)",
            "PYTHON",
            "policy::python",
        ),
        ("JS policy (componentize-js)", "JS", "policy::js"),
    ];
    let mut policies = String::new();
    let mut present = Vec::new();
    for (label, env, id) in kinds {
        match std::env::var(format!("III_POLICY_{env}")) {
            Ok(p) if std::path::Path::new(&p).exists() => {
                policies.push_str(&format!(
                    "        - {{id: \"{id}\", path: \"{p}\", config: {{}}, limits: {{deadline_ms: 1000, memory_mb: 128}}}}\n"
                ));
                present.push((label, Some((id, free_port()))));
            }
            _ => present.push((label, None)),
        }
    }
    let trusted = free_port();
    let sdk_mw = free_port();
    let auth_sdk = free_port();
    let auth_policy = free_port();
    let mut extra = format!(
        "  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {sdk_mw}, middleware_function_id: mw::proxy}}\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {auth_sdk}, rbac: {{auth_function_id: auth::sdk, expose_functions: [match(\"bench::*\")]}}}}\n"
    );
    for (_, p) in &present {
        if let Some((id, port)) = p {
            extra.push_str(&format!("  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {port}, middleware_function_id: \"{id}\"}}\n"));
        }
    }
    let component_auth = present
        .iter()
        .find_map(|(l, p)| (*l == "component policy").then_some(p.as_ref()).flatten())
        .map(|(id, _)| *id);
    if let Some(id) = component_auth {
        extra.push_str(&format!("  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {auth_policy}, rbac: {{auth_function_id: \"{id}\", expose_functions: [match(\"bench::*\")]}}}}\n"));
    }
    if !policies.is_empty() {
        extra.push_str(&format!(
            "  - name: policies\n    config:\n      policies:\n{policies}"
        ));
    }
    let engine = start_engine_with(trusted, &extra)?;
    wait_port(trusted)?;
    wait_port(sdk_mw)?;
    start_callee(Target::Engine, trusted).await?;
    start_sdk_middleware(trusted).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (base50, base99) = hop(trusted, calls).await?;
    let mut rows = vec![(
        "no middleware".to_string(),
        format!("{} / {}", us(base50), us(base99)),
        "—".to_string(),
    )];
    let added = |p50: Duration| {
        let d = p50.as_secs_f64() - base50.as_secs_f64();
        format!("{:+.0} µs", d * 1e6)
    };
    let (p50, p99) = hop(sdk_mw, calls).await?;
    rows.push((
        "SDK-function middleware".into(),
        format!("{} / {}", us(p50), us(p99)),
        added(p50),
    ));
    for (label, p) in &present {
        match p {
            Some((_, port)) => {
                wait_port(*port)?;
                match hop(*port, calls).await {
                    Ok((p50, p99)) => rows.push((
                        label.to_string(),
                        format!("{} / {}", us(p50), us(p99)),
                        added(p50),
                    )),
                    Err(e) => rows.push((label.to_string(), format!("failed: {e}"), "—".into())),
                }
            }
            None => rows.push((
                label.to_string(),
                "not built (set III_POLICY_*)".into(),
                "—".into(),
            )),
        }
    }
    let (a50, a99) = auth(auth_sdk, "", conns).await?;
    let (n50, n99) = auth(trusted, "", conns).await?;
    let mut auth_rows = vec![
        (
            "no auth (trusted listener)",
            format!("{} / {}", us(n50), us(n99)),
        ),
        ("SDK auth function", format!("{} / {}", us(a50), us(a99))),
    ];
    if component_auth.is_some() {
        let (c50, c99) = auth(auth_policy, "", conns).await?;
        auth_rows.push((
            "component policy auth",
            format!("{} / {}", us(c50), us(c99)),
        ));
    }

    println!(
        "\niii middleware and auth cost ({} sequential calls per row, one engine, this run)\n",
        calls
    );
    println!("| middleware | call p50 / p99 | added p50 vs none |");
    println!("|---|---|---|");
    for (w, l, a) in &rows {
        println!("| {w} | {l} | {a} |");
    }
    println!("\n| connection ({conns} connects) | connect → workerregistered p50 / p99 |");
    println!("|---|---|");
    for (w, l) in &auth_rows {
        println!("| {w} | {l} |");
    }
    println!("\nTarget (issue #11): a component policy adds ≤ 20 µs p50 per call. Instantiation alone: `cargo bench -p iii-plugin-host --bench plugin_bench`.");
    drop(engine);
    Ok(())
}
