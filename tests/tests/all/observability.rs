//! Observability: logs, traces and metrics recorded by the engine and read back through
//! `engine::logs::*`, `engine::traces::*`, `engine::metrics::list`, the Prometheus endpoint and
//! an OTLP collector this test runs.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use iii_tests::{http, EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn obs_engine(extra: &str) -> EngineProc {
    EngineProc::start(&format!(
        "  - name: iii-observability\n    config: {{prometheus_address: \"127.0.0.1:0\"{extra}}}\n"
    ))
}

fn prometheus_port(e: &EngineProc) -> u16 {
    let log = e.wait_for_log(&["Prometheus metrics on http://"]);
    let i = log.find("Prometheus metrics on http://").expect("line") + 29;
    let addr: String = log[i..].chars().take_while(|c| *c != '/').collect();
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port")
}

async fn otel(
    e: &EngineProc,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("{}/otel", e.url()))
        .await
        .expect("connect /otel");
    ws
}

fn frame(kind: &str, body: &Value) -> Message {
    let mut b = kind.as_bytes().to_vec();
    b.extend_from_slice(body.to_string().as_bytes());
    Message::binary(b)
}

fn log_body(service: &str, records: Vec<Value>) -> Value {
    json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"scope": {"name": "iii.logger"}, "logRecords": records}]}]})
}

fn span(trace: &str, id: &str, parent: &str, name: &str, start: u64, status: u8) -> Value {
    json!({"traceId": trace, "spanId": id, "parentSpanId": parent, "name": name, "kind": 1,
        "startTimeUnixNano": start.to_string(), "endTimeUnixNano": (start + 1000).to_string(),
        "attributes": [{"key": "iii.function.id", "value": {"stringValue": name.trim_start_matches("execute ")}}],
        "status": {"code": status}})
}

fn span_body(service: &str, spans: Vec<Value>) -> Value {
    json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": spans}]}]})
}

/// Polls `function_id` until `ok` accepts the result.
async fn until(
    w: &mut RawWorker,
    function_id: &str,
    data: Value,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = w.call(function_id, data.clone()).await;
        if ok(&r["result"]) {
            return r["result"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{function_id} never matched; last: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logs_from_engine_log_and_sdk_frames_are_stored_and_filtered() {
    let e = obs_engine("");
    let mut w = RawWorker::connect_named(&e.url(), "logger-worker", None).await;
    let t1 = "0af7651916cd43dd8448eb211c80319c";
    let t2 = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = w
        .call("engine::log::warn", json!({"message": "disk low", "trace_id": t1, "data": {"free": 3}, "service_name": "svc-a", "function_id": "a::f"}))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let mut o = otel(&e).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    o.send(frame("LOGS", &log_body("svc-b", vec![
        json!({"timeUnixNano": now.to_string(), "severityNumber": 9, "severityText": "INFO", "body": {"stringValue": "from the sdk"}, "traceId": t2, "spanId": "00f067aa0ba902b7", "attributes": []}),
        json!({"timeUnixNano": now.to_string(), "severityNumber": 5, "severityText": "DEBUG", "body": {"stringValue": "noise"}, "attributes": []}),
    ]))).await.expect("send");
    // A malformed frame is dropped without closing the socket or stalling the next one.
    o.send(Message::binary(b"LOGS{not json".to_vec()))
        .await
        .expect("send");
    o.send(frame("LOGS", &log_body("svc-b", vec![
        json!({"timeUnixNano": now.to_string(), "severityNumber": 17, "severityText": "ERROR", "body": {"stringValue": "after the bad frame"}, "attributes": []}),
    ]))).await.expect("send");

    let by_t2 = until(&mut w, "engine::logs::list", json!({"trace_id": t2}), |r| {
        r["total"] == 1
    })
    .await;
    assert_eq!(by_t2["logs"][0]["message"], "from the sdk");
    assert_eq!(by_t2["logs"][0]["service_name"], "svc-b");
    assert_eq!(by_t2["logs"][0]["level"], "info");
    assert_eq!(by_t2["logs"][0]["span_id"], "00f067aa0ba902b7");
    let by_t1 = w
        .call("engine::logs::list", json!({"trace_id": t1.to_uppercase()}))
        .await["result"]
        .clone();
    assert_eq!(by_t1["total"], 1, "{by_t1}");
    let l = &by_t1["logs"][0];
    assert_eq!(
        (
            l["message"].as_str(),
            l["level"].as_str(),
            l["worker"].as_str(),
            l["function_id"].as_str()
        ),
        (
            Some("disk low"),
            Some("warn"),
            Some("logger-worker"),
            Some("a::f")
        )
    );
    assert_eq!(l["data"], json!({"free": 3}));
    until(
        &mut w,
        "engine::logs::list",
        json!({"level": "error"}),
        |r| r["total"] == 1 && r["logs"][0]["message"] == "after the bad frame",
    )
    .await;
    let all = w.call("engine::logs::list", json!({})).await["result"].clone();
    assert_eq!(all["total"], 4, "{all}");
    assert_eq!(
        all["logs"][0]["message"], "after the bad frame",
        "newest first"
    );
    let warn_up = w.call("engine::logs::list", json!({"level": "warn"})).await["result"].clone();
    assert_eq!(warn_up["total"], 2);
    let by_worker = w
        .call("engine::logs::list", json!({"worker": "logger-worker"}))
        .await["result"]
        .clone();
    assert_eq!(by_worker["total"], 1);
    let paged = w
        .call("engine::logs::list", json!({"offset": 1, "limit": 2}))
        .await["result"]
        .clone();
    assert_eq!(
        (paged["logs"].as_array().map(Vec::len), &paged["total"]),
        (Some(2), &json!(4))
    );
    let future = w
        .call(
            "engine::logs::list",
            json!({"since_ms": now / 1_000_000 + 3_600_000}),
        )
        .await["result"]
        .clone();
    assert_eq!(future["total"], 0);
    let bad = w.call("engine::logs::list", json!({"level": "loud"})).await;
    assert!(
        bad["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("level"),
        "{bad}"
    );
    let cleared = w.call("engine::logs::clear", json!({})).await["result"].clone();
    assert_eq!(cleared["cleared"], 4);
    assert_eq!(
        w.call("engine::logs::list", json!({})).await["result"]["total"],
        0
    );
}

#[tokio::test]
async fn sdk_spans_form_traces_and_fire_trace_triggers() {
    let e = obs_engine("");
    let mut w = RawWorker::connect_named(&e.url(), "trace-watcher", None).await;
    w.register_function("obs::on_trace", json!({})).await;
    w.register_function("obs::on_log", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "tt", "trigger_type": "trace", "function_id": "obs::on_trace", "config": {"status": "error"}})).await;
    w.send(json!({"type": "registertrigger", "id": "lt", "trigger_type": "log", "function_id": "obs::on_log", "config": {"level": "error"}})).await;
    w.sync().await;
    let trace = "5b8efff798038103d269b633813fc60c";
    let mut o = otel(&e).await;
    // C and B end before A, as a real chain's spans do.
    o.send(frame(
        "OTLP",
        &span_body(
            "node-svc",
            vec![
                span(
                    trace,
                    "00000000000000c3",
                    "00000000000000b2",
                    "execute c",
                    300,
                    2,
                ),
                span(
                    trace,
                    "00000000000000b2",
                    "00000000000000a1",
                    "execute b",
                    200,
                    1,
                ),
            ],
        ),
    ))
    .await
    .expect("send");
    o.send(frame(
        "OTLP",
        &span_body(
            "py-svc",
            vec![span(trace, "00000000000000a1", "", "execute a", 100, 1)],
        ),
    ))
    .await
    .expect("send");
    let fired = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "obs::on_trace")
        .await;
    assert_eq!(fired["data"]["trace_id"], trace);
    assert_eq!(
        fired["data"]["spans"].as_array().map(Vec::len),
        Some(3),
        "{fired}"
    );

    let list = until(&mut w, "engine::traces::list", json!({}), |r| {
        r["total"] == 1
    })
    .await;
    let t = &list["traces"][0];
    assert_eq!(
        (
            t["trace_id"].as_str(),
            t["root_name"].as_str(),
            t["service_name"].as_str(),
            t["span_count"].as_u64(),
            t["status"].as_str()
        ),
        (
            Some(trace),
            Some("execute a"),
            Some("py-svc"),
            Some(3),
            Some("error")
        )
    );
    let tree = w
        .call("engine::traces::tree", json!({"trace_id": trace}))
        .await["result"]
        .clone();
    let spans = tree["spans"].as_array().expect("spans");
    let parent_of = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["parent_span_id"].clone())
    };
    assert_eq!(parent_of("execute a"), Some(Value::Null));
    assert_eq!(parent_of("execute b"), Some(json!("00000000000000a1")));
    assert_eq!(parent_of("execute c"), Some(json!("00000000000000b2")));
    let by_fn = w
        .call("engine::traces::list", json!({"function_id": "c"}))
        .await["result"]
        .clone();
    assert_eq!(by_fn["total"], 1);
    let none = w
        .call("engine::traces::list", json!({"function_id": "zzz"}))
        .await["result"]
        .clone();
    assert_eq!(none["total"], 0);
    let missing = w
        .call(
            "engine::traces::tree",
            json!({"trace_id": "ffffffffffffffffffffffffffffffff"}),
        )
        .await;
    assert!(missing.get("error").is_some(), "{missing}");

    // A builtin call made inside a trace gets the engine's own `call <fn>` span.
    let tp = "00-7a3f0c5f1b9d4e2a8c6b5d4e3f2a1b0c-1111111111111111-01";
    let r = w
        .call_with(
            "engine::functions::list",
            json!({}),
            json!({"traceparent": tp}),
        )
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let eng = until(
        &mut w,
        "engine::traces::tree",
        json!({"trace_id": "7a3f0c5f1b9d4e2a8c6b5d4e3f2a1b0c"}),
        |r| r["spans"].is_array(),
    )
    .await;
    let s = &eng["spans"][0];
    assert_eq!(
        (
            s["name"].as_str(),
            s["parent_span_id"].as_str(),
            s["service_name"].as_str(),
            s["kind"].as_i64()
        ),
        (
            Some("call engine::functions::list"),
            Some("1111111111111111"),
            Some("iii"),
            Some(2)
        )
    );

    // The `log` trigger gets records at or above its level only.
    w.call("engine::log::info", json!({"message": "quiet"}))
        .await;
    w.call(
        "engine::log::error",
        json!({"message": "loud", "trace_id": trace}),
    )
    .await;
    let got = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "obs::on_log")
        .await;
    assert_eq!(
        (
            got["data"]["message"].as_str(),
            got["data"]["severity_number"].as_i64(),
            got["data"]["trace_id"].as_str()
        ),
        (Some("loud"), Some(17), Some(trace))
    );
    let bad = w.call("engine::register_trigger", json!({"trigger_type": "log", "function_id": "obs::on_log", "config": {"level": "loud"}})).await;
    assert!(bad.get("error").is_some(), "{bad}");

    let cleared = w.call("engine::traces::clear", json!({})).await["result"].clone();
    assert_eq!(cleared["cleared"], 4);
}

#[tokio::test]
async fn metrics_count_calls_errors_and_scrape_as_prometheus_text() {
    let e = obs_engine("");
    let port = prometheus_port(&e);
    let mut callee = RawWorker::connect_named(&e.url(), "metrics-callee", None).await;
    callee.register_function("m::work", json!({})).await;
    callee.sync().await;
    let mut caller = RawWorker::connect(&e.url()).await;
    for i in 0..5 {
        let id = uuid::Uuid::new_v4().to_string();
        caller.send(json!({"type": "invokefunction", "invocation_id": id, "function_id": "m::work", "data": {"i": i}})).await;
        let inv = callee.recv_where(|v| v["type"] == "invokefunction").await;
        if i < 3 {
            callee.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "m::work", "result": {"ok": true}})).await;
        } else {
            callee.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "m::work", "error": {"code": "boom", "message": "failed"}})).await;
        }
        caller
            .recv_where(|v| v["type"] == "invocationresult" && v["invocation_id"] == id.as_str())
            .await;
    }
    let m = caller.call("engine::metrics::list", json!({})).await["result"].clone();
    let items = m["metrics"].as_array().expect("metrics").clone();
    let find = |name: &str, labels: Value| {
        items
            .iter()
            .find(|i| {
                i["name"] == name
                    && labels
                        .as_object()
                        .unwrap()
                        .iter()
                        .all(|(k, v)| &i["labels"][k] == v)
            })
            .cloned()
    };
    assert_eq!(
        find(
            "iii_invocations_total",
            json!({"function_id": "m::work", "status": "ok"})
        )
        .map(|i| i["value"].clone()),
        Some(json!(3)),
        "{m}"
    );
    assert_eq!(
        find(
            "iii_invocations_total",
            json!({"function_id": "m::work", "status": "error"})
        )
        .map(|i| i["value"].clone()),
        Some(json!(2))
    );
    assert_eq!(
        find(
            "iii_invocation_errors_total",
            json!({"function_id": "m::work", "error_code": "boom"})
        )
        .map(|i| i["value"].clone()),
        Some(json!(2))
    );
    let h = find(
        "iii_invocation_duration_seconds",
        json!({"function_id": "m::work"}),
    )
    .expect("histogram");
    assert_eq!(h["count"], 5);
    assert_eq!(
        h["buckets"]
            .as_array()
            .and_then(|b| b.last())
            .map(|b| b["le"].clone()),
        Some(json!("+Inf"))
    );
    assert!(
        find("iii_workers", json!({}))
            .and_then(|i| i["value"].as_f64())
            .is_some_and(|n| n >= 2.0),
        "{m}"
    );

    let (status, headers, body) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/metrics", &[], b""))
            .await
            .expect("scrape");
    assert_eq!(status, 200);
    assert!(iii_tests::header(&headers, "content-type")
        .unwrap_or("")
        .contains("openmetrics-text"));
    let text = String::from_utf8(body).expect("utf-8");
    // Every sample line parses as `name{labels} value`, and the counters are the same.
    let mut samples = std::collections::HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        samples.insert(series.to_string(), v);
    }
    assert_eq!(
        samples.get("iii_invocations_total{function_id=\"m::work\",status=\"ok\"}"),
        Some(&3.0),
        "{text}"
    );
    assert_eq!(
        samples.get("iii_invocations_total{function_id=\"m::work\",status=\"error\"}"),
        Some(&2.0)
    );
    assert_eq!(
        samples.get("iii_invocation_duration_seconds_count{function_id=\"m::work\"}"),
        Some(&5.0)
    );
    assert_eq!(
        samples
            .get("iii_invocation_duration_seconds_bucket{le=\"+Inf\",function_id=\"m::work\"}")
            .or_else(|| samples.get(
                "iii_invocation_duration_seconds_bucket{function_id=\"m::work\",le=\"+Inf\"}"
            )),
        Some(&5.0),
        "{text}"
    );
    assert!(text.contains("# TYPE iii_invocations counter"));
    assert!(text.trim_end().ends_with("# EOF"));
}

/// A local OTLP/HTTP collector: answers 200 to every POST and hands the (path, body) pairs over.
async fn collector() -> (u16, tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
    use http_body_util::BodyExt;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes().to_vec())
                                .unwrap_or_default();
                            let _ = tx.send((path, body));
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::new()),
                            ))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn otlp_export_reaches_a_local_collector() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;
    let (cport, mut rx) = collector().await;
    let e = obs_engine(&format!(
        ", exporter: both, endpoint: \"http://127.0.0.1:{cport}\""
    ));
    let mut o = otel(&e).await;
    let trace = "aaaabbbbccccddddeeeeffff00001111";
    o.send(frame(
        "OTLP",
        &span_body(
            "py-svc",
            vec![span(trace, "0000000000000001", "", "execute x", 100, 1)],
        ),
    ))
    .await
    .expect("send");
    let mut w = RawWorker::connect(&e.url()).await;
    w.call(
        "engine::log::info",
        json!({"message": "exported", "trace_id": trace, "service_name": "py-svc"}),
    )
    .await;
    let (mut got_span, mut got_log) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(got_span && got_log) {
        let left = deadline.saturating_duration_since(Instant::now());
        let (path, body) = tokio::time::timeout(left, rx.recv())
            .await
            .expect("collector got nothing in time")
            .expect("open");
        match path.as_str() {
            "/v1/traces" => {
                let req =
                    ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf traces");
                let s = &req.resource_spans[0].scope_spans[0].spans[0];
                assert_eq!(s.name, "execute x");
                assert_eq!(
                    s.trace_id,
                    (0..16)
                        .map(|i| u8::from_str_radix(&trace[i * 2..i * 2 + 2], 16).unwrap())
                        .collect::<Vec<_>>()
                );
                got_span = true;
            }
            "/v1/logs" => {
                let req = ExportLogsServiceRequest::decode(body.as_slice()).expect("protobuf logs");
                let r = &req.resource_logs[0].scope_logs[0].log_records[0];
                assert_eq!(r.severity_number, 9);
                got_log = true;
            }
            other => panic!("unexpected path {other}"),
        }
    }
    // `both` also keeps them in memory.
    let t = w.call("engine::traces::list", json!({})).await["result"].clone();
    assert_eq!(t["total"], 1);
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test]
async fn a_log_flood_stays_within_the_configured_cap() {
    let cap = 2 << 20;
    let e = obs_engine(&format!(", logs_max_count: 1000000, logs_max_bytes: {cap}"));
    let mut w = RawWorker::connect(&e.url()).await;
    let mut o = otel(&e).await;
    let msg = "x".repeat(400);
    let batch: Vec<Value> = (0..500)
        .map(|_| json!({"timeUnixNano": "1700000000000000000", "severityNumber": 9, "body": {"stringValue": msg}, "attributes": []}))
        .collect();
    let one = frame("LOGS", &log_body("flood", batch));
    // Warm up to the cap, then measure while sending ten times as much again.
    for _ in 0..20 {
        o.send(one.clone()).await.expect("send");
    }
    w.sync().await;
    until(&mut w, "engine::metrics::list", json!({}), |r| {
        r["metrics"].as_array().is_some_and(|m| {
            m.iter()
                .any(|i| i["name"] == "iii_log_records" && i["value"].as_u64().unwrap_or(0) > 1000)
        })
    })
    .await;
    let before = rss_kib(e.pid());
    for _ in 0..200 {
        o.send(one.clone()).await.expect("send");
    }
    let r = until(&mut w, "engine::metrics::list", json!({}), |r| {
        r["metrics"].as_array().is_some_and(|m| {
            m.iter()
                .any(|i| i["name"] == "iii_telemetry_frames_total" && i["value"] == 220)
        })
    })
    .await;
    let after = rss_kib(e.pid());
    let get = |n: &str| {
        r["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == n)
            .map(|i| i["value"].as_u64().unwrap_or(0))
            .unwrap()
    };
    assert!(get("iii_log_bytes") <= cap, "{r}");
    // 110 000 records of ~400 bytes were sent (~44 MB); the store holds at most 2 MiB of them.
    let total = w.call("engine::logs::list", json!({"limit": 1})).await["result"]["total"]
        .as_u64()
        .unwrap();
    assert!(total < 110_000 / 5, "{total} records kept");
    let growth = after.saturating_sub(before);
    eprintln!(
        "RSS before {before} KiB, after {after} KiB, growth {growth} KiB, records kept {total}"
    );
    assert!(
        growth < 24 * 1024,
        "RSS grew by {growth} KiB during the flood"
    );
}

#[tokio::test]
async fn http_responses_and_queue_depth_are_metrics() {
    let e = obs_engine("}\n  - name: iii-queue\n    config: {");
    let port = prometheus_port(&e);
    let mut w = RawWorker::connect_named(&e.url(), "obs-http-queue", None).await;
    w.register_function("obs::page", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "page", "trigger_type": "http", "function_id": "obs::page",
        "config": {"api_path": "page", "http_method": "GET"}})).await;
    // A subscriber that takes one delivery and never answers: the rest wait.
    w.register_function("obs::slow", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "slow", "trigger_type": "durable:subscriber", "function_id": "obs::slow",
        "config": {"topic": "obs-depth", "queue_config": {"concurrency": 1}}})).await;
    w.sync().await;

    let http_port = e.http_port;
    let page = tokio::spawn(async move {
        tokio::task::spawn_blocking(move || http(http_port, "GET", "/page", &[], b""))
            .await
            .expect("request")
    });
    let inv = w
        .recv_where(|v| v["type"] == "invokefunction" && v["function_id"] == "obs::page")
        .await;
    w.send(json!({"type": "invocationresult", "invocation_id": inv["invocation_id"], "function_id": "obs::page",
        "result": {"status_code": 201, "body": {"ok": true}}})).await;
    assert_eq!(page.await.expect("page").0, 201);
    for _ in 0..2 {
        let r = tokio::task::spawn_blocking(move || http(http_port, "GET", "/nothing", &[], b""))
            .await
            .expect("request");
        assert_eq!(r.0, 404);
    }
    for i in 0..3 {
        let r = w
            .call(
                "iii::durable::publish",
                json!({"topic": "obs-depth", "data": {"i": i}}),
            )
            .await;
        assert!(r.get("error").is_none(), "{r}");
    }

    let value = |m: &Value, name: &str, key: &str, want: &dyn Fn(&str) -> bool| {
        m["metrics"].as_array().and_then(|items| {
            items
                .iter()
                .find(|i| i["name"] == name && i["labels"][key].as_str().is_some_and(want))
                .and_then(|i| i["value"].as_f64())
        })
    };
    let m = until(&mut w, "engine::metrics::list", json!({}), |m| {
        value(m, "iii_queue_depth", "queue", &|q| q.contains("obs-depth")) == Some(2.0)
    })
    .await;
    assert_eq!(
        value(&m, "iii_http_responses_total", "status", &|s| s == "201"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        value(&m, "iii_http_responses_total", "status", &|s| s == "404"),
        Some(2.0),
        "{m}"
    );
    let kinds: Vec<_> = m["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["name"] == "iii_http_responses_total" || i["name"] == "iii_queue_depth")
        .map(|i| (i["name"].as_str().unwrap().to_string(), i["kind"].clone()))
        .collect();
    assert!(
        kinds.iter().all(|(n, k)| if n == "iii_queue_depth" {
            k == "gauge"
        } else {
            k == "counter"
        }),
        "{kinds:?}"
    );

    let (status, _, body) =
        tokio::task::spawn_blocking(move || http(port, "GET", "/metrics", &[], b""))
            .await
            .expect("scrape");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).expect("utf-8");
    assert!(text.contains("# TYPE iii_http_responses counter"), "{text}");
    assert!(
        text.contains("iii_http_responses_total{status=\"201\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("iii_http_responses_total{status=\"404\"} 2"),
        "{text}"
    );
    assert!(text.contains("# TYPE iii_queue_depth gauge"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("iii_queue_depth{queue=\"")
                && l.contains("obs-depth")
                && l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) == Some(2.0)),
        "{text}"
    );
}
