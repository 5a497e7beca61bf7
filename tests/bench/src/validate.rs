//! `iii-bench validate`: what `validate: enforce` costs per call, against `off`, in one run of a
//! release engine; prints a table.
//!
//! One engine with two worker listeners: the trusted one (`validate` unset: off) and one with
//! `validate: enforce`. A callee on the trusted listener serves `bench::order`, registered with a
//! typical object schema (required fields, string patterns and lengths, nested objects, an
//! array of line items, `additionalProperties: false`), and `bench::plain`, the same handler
//! without a schema. Every call carries the same 1 KiB order that the schema accepts, and is
//! answered with a small constant result, so the payload's own copying is the same in every row.
//!
//! Rows are measured in alternating rounds (off, enforce, enforce without schema, …) so drift of
//! the machine spreads over all of them. Sequential calls (concurrency 1) give the latency;
//! pipelined calls (16 in flight) give the throughput, where the validation's CPU shows.

use super::*;

/// The schema of `bench::order`: what a typical SDK model of an order derives.
fn order_schema() -> serde_json::Value {
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "required": ["order_id", "customer", "lines", "currency", "created_at"],
        "properties": {
            "order_id": {"type": "string", "pattern": "^ord_[0-9a-f]{16}$"},
            "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
            "created_at": {"type": "string", "minLength": 20, "maxLength": 40},
            "note": {"type": "string", "maxLength": 500},
            "customer": {
                "type": "object",
                "required": ["id", "email", "name"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "email": {"type": "string", "pattern": "^[^@]+@[^@]+$"},
                    "name": {"type": "string", "minLength": 1, "maxLength": 100},
                    "vip": {"type": "boolean"}
                }
            },
            "lines": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["sku", "qty", "unit_price"],
                    "properties": {
                        "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                        "qty": {"type": "integer", "minimum": 1, "maximum": 1000},
                        "unit_price": {"type": "number", "exclusiveMinimum": 0},
                        "gift": {"type": "boolean"}
                    }
                }
            }
        }
    })
}

/// A 1 KiB order (padded with `note`) that [`order_schema`] accepts.
fn order_payload() -> String {
    let lines: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            serde_json::json!({"sku": format!("ABC-{:04}", 1000 + i), "qty": i + 1,
                               "unit_price": 9.5 + i as f64, "gift": i % 2 == 0})
        })
        .collect();
    let mut order = serde_json::json!({
        "order_id": "ord_0123456789abcdef",
        "currency": "EUR",
        "created_at": "2026-12-01T20:00:00.000Z",
        "customer": {"id": 42, "email": "ada@example.com", "name": "Ada Lovelace", "vip": true},
        "lines": lines,
        "note": "",
    });
    let len = order.to_string().len();
    order["note"] = serde_json::Value::String("x".repeat(1024usize.saturating_sub(len)));
    order.to_string()
}

/// The callee: registers both functions and answers every call with `{"ok":true}`.
async fn start_callee(port: u16) -> Result<()> {
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    ws.next().await; // workerregistered
    let reg = serde_json::json!({"type": "registerfunction", "id": "bench::order",
                                 "request_format": order_schema()});
    ws.send(Message::text(reg.to_string())).await?;
    ws.send(Message::text(
        r#"{"type":"registerfunction","id":"bench::plain"}"#,
    ))
    .await?;
    ws.send(Message::text(r#"{"type":"invokefunction","function_id":"engine::workers::register","data":{"name":"bench-validate","pid":1},"action":{"type":"void"}}"#)).await?;
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(m)) = stream.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(inc) = serde_json::from_str::<Incoming>(t.as_str()) else {
                continue;
            };
            if inc.kind != "invokefunction" {
                continue;
            }
            let id = inc.invocation_id.unwrap_or("");
            let reply = format!(
                r#"{{"type":"invocationresult","invocation_id":"{id}","result":{{"ok":true}}}}"#
            );
            if sink.send(Message::text(reply)).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// One call through `port`: its result frame.
async fn one_call(port: u16, function_id: &str, data: &str) -> Result<serde_json::Value> {
    let mut ws = connect(&format!("ws://127.0.0.1:{port}/")).await?;
    ws.next().await;
    ws.send(Message::text(format!(r#"{{"type":"invokefunction","invocation_id":"00000000-0000-4000-8000-0000000000bb","function_id":"{function_id}","data":{data}}}"#))).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .context("no answer")?;
        if let Some(Ok(Message::Text(t))) = m {
            let v: serde_json::Value = serde_json::from_str(t.as_str())?;
            if v["type"] == "invocationresult" {
                return Ok(v);
            }
        }
    }
}

struct Case {
    label: &'static str,
    port: u16,
    function_id: &'static str,
    lat: Vec<Duration>,
    rates: Vec<f64>,
}

pub async fn bench() -> Result<()> {
    let quick = std::env::var("III_BENCH_QUICK").is_ok();
    let (calls, rounds) = if quick { (500, 2) } else { (4000, 5) };
    let trusted = free_port();
    let enforce = free_port();
    let engine = start_engine_with(
        trusted,
        &format!(
            "  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {enforce}, validate: enforce}}\n"
        ),
    )?;
    wait_port(trusted)?;
    wait_port(enforce)?;
    start_callee(trusted).await?;
    let payload = order_payload();
    // The registration is applied once a call through it is answered; the schema accepts the
    // payload and refuses a broken one, or the rows would measure the wrong thing.
    let mut ready = false;
    for _ in 0..200 {
        let r = one_call(enforce, "bench::order", &payload).await?;
        if r["result"]["ok"] == true {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if !ready {
        bail!("bench::order never answered through the enforce listener");
    }
    let broken = payload.replacen("\"qty\":1", "\"qty\":0", 1);
    let r = one_call(enforce, "bench::order", &broken).await?;
    if r["error"]["code"] != "validation_error" {
        bail!("the enforce listener did not refuse a bad order: {r}");
    }

    let mut cases = [
        ("off: function with schema", trusted, "bench::order"),
        ("enforce: function with schema", enforce, "bench::order"),
        ("off: function without schema", trusted, "bench::plain"),
        ("enforce: function without schema", enforce, "bench::plain"),
    ]
    .map(|(label, port, function_id)| Case {
        label,
        port,
        function_id,
        lat: Vec::new(),
        rates: Vec::new(),
    });
    let frame_for = |fid: &'static str, payload: &str| {
        let payload = payload.to_string();
        move |id: &str, _i: usize| {
            format!(
                r#"{{"type":"invokefunction","invocation_id":"{id}","function_id":"{fid}","data":{payload}}}"#
            )
        }
    };
    // Warm-up: connections, allocator, the validator's compiled schema.
    for c in &cases {
        load_frames(
            Target::Engine,
            c.port,
            16,
            calls / 4,
            frame_for(c.function_id, &payload),
        )
        .await?;
    }
    for _ in 0..rounds {
        for c in cases.iter_mut() {
            let r = load_frames(
                Target::Engine,
                c.port,
                1,
                calls / rounds,
                frame_for(c.function_id, &payload),
            )
            .await?;
            c.lat.extend(r.lat);
            let r = load_frames(
                Target::Engine,
                c.port,
                16,
                calls,
                frame_for(c.function_id, &payload),
            )
            .await?;
            c.rates.push(r.per_sec());
        }
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let mut rows = Vec::new();
    for c in cases.iter_mut() {
        let (p50, p99) = (pct(&mut c.lat, 0.5), pct(&mut c.lat, 0.99));
        let rate = median(&mut c.rates);
        rows.push((c.label, p50, p99, rate));
    }
    let base = |fid_schema: bool| {
        let i = if fid_schema { 0 } else { 2 };
        (rows[i].1, rows[i].3)
    };
    println!(
        "\niii payload validation cost (1 KiB order, {} bytes; {} sequential calls and {} rounds of {} pipelined calls (16 in flight) per row; one engine, this run)\n",
        payload.len(),
        calls / rounds * rounds,
        rounds,
        calls
    );
    println!("| listener: target | call p50 / p99 | added p50 vs off | calls/s (16 in flight, median) | vs off |");
    println!("|---|---|---|---|---|");
    for (i, (label, p50, p99, rate)) in rows.iter().enumerate() {
        let (b50, brate) = base(i < 2);
        let (added, rel) = if i % 2 == 0 {
            ("—".to_string(), "—".to_string())
        } else {
            (
                format!("{:+.1} µs", (p50.as_secs_f64() - b50.as_secs_f64()) * 1e6),
                format!("{:+.1}%", (rate / brate - 1.0) * 100.0),
            )
        };
        println!(
            "| {label} | {} / {} | {added} | {rate:.0} | {rel} |",
            us(*p50),
            us(*p99)
        );
    }
    let per_call_cpu = |i: usize| 1e6 / rows[i].3 - 1e6 / rows[i - 1].3;
    println!(
        "\nEngine time per call implied by the pipelined rates (1/rate, enforce − off): with schema {:+.1} µs, without schema {:+.1} µs.",
        per_call_cpu(1),
        per_call_cpu(3)
    );
    println!("A function without a schema is not looked at beyond its entry's `request_format` (one pointer check); the last row measures that.");
    drop(engine);
    Ok(())
}
