//! Hot reload of `config.yaml` as a user sees it: the real `iii` watching its file while a
//! test edits it. Added entries start, removed ones stop, changed ones are recreated (routes
//! and connections survive), and a file that fails to parse or validate is rejected as a
//! whole while the engine keeps serving.

use std::time::{Duration, Instant};

use iii_tests::{free_port, header, http, EngineProc, RawWorker};
use serde_json::{json, Value};

/// An engine with the watcher on, on ports picked up front (so the harness's post-start
/// rewrite of the file is byte-identical and changes nothing).
fn watched(extra: &str) -> (EngineProc, u16, u16) {
    let (ws, web) = (free_port(), free_port());
    let extra = extra.to_string();
    let e = EngineProc::start_with_env(
        move |_, _| base(ws, web, &extra),
        &[("III_WATCH_CONFIG", "1")],
    );
    e.wait_for_log(&["watching the configuration file"]);
    (e, ws, web)
}

fn base(ws: u16, web: u16, extra: &str) -> String {
    format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: http\n    config: {{host: 127.0.0.1, port: {web}, default_timeout: 5000}}\n{extra}"
    )
}

fn write(e: &EngineProc, text: &str) {
    // Write-then-rename, as editors do; the watcher must see it either way.
    let tmp = e.dir.join(".config.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, e.dir.join("config.yaml")).unwrap();
}

/// How many times `needle` occurs in the log.
fn count(e: &EngineProc, needle: &str) -> usize {
    e.log().matches(needle).count()
}

/// Waits until the log has one more `needle` than `before`, and returns the log.
fn wait_count(e: &EngineProc, needle: &str, before: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = e.log();
        if log.matches(needle).count() > before {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no new {needle:?} in the log after 30 s:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn publish(w: &mut RawWorker) -> Value {
    w.call("publish", json!({"topic": "t", "data": 1})).await
}

async fn get(port: u16, path: &'static str, headers: Vec<(&'static str, &'static str)>) -> u16 {
    tokio::task::spawn_blocking(move || http(port, "GET", path, &headers, b"").0)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_removed_and_invalid_files_while_serving() {
    let (e, ws, web) = watched("");
    let mut w = RawWorker::connect(&e.url()).await;
    assert_eq!(publish(&mut w).await["error"]["code"], "function_not_found");

    // Added: pubsub starts and serves; the connection made before is unaffected.
    let n = count(&e, "configuration reloaded");
    write(&e, &base(ws, web, "  - name: pubsub\n"));
    let log = wait_count(&e, "configuration reloaded", n);
    assert!(
        log.contains(r#"added ["pubsub"], removed [], changed [], unchanged"#),
        "{log}"
    );
    let r = publish(&mut w).await;
    assert!(r.get("error").is_none(), "{r}");

    // A file that does not parse: rejected whole, with the file and the line; still serving.
    let n = count(&e, "configuration change rejected");
    write(
        &e,
        &format!(
            "{}  - name: cron\n   config: [\n",
            base(ws, web, "  - name: pubsub\n")
        ),
    );
    let log = wait_count(&e, "configuration change rejected", n);
    let line = log
        .lines()
        .rfind(|l| l.contains("configuration change rejected"))
        .unwrap();
    assert!(line.contains("config.yaml"), "{line}");
    assert!(line.contains("line"), "{line}");
    assert!(log.contains("still running on the previous configuration"));
    let r = publish(&mut w).await;
    assert!(r.get("error").is_none(), "pubsub kept serving: {r}");

    // A file that parses but does not validate: rejected whole, naming the key.
    let n = count(&e, "configuration change rejected");
    write(
        &e,
        &base(
            ws,
            web,
            "  - name: pubsub\n  - name: queue\n    config: {bogus: 1}\n",
        ),
    );
    let log = wait_count(&e, "configuration change rejected", n);
    assert!(log.contains("queue"), "{log}");
    assert!(log.contains("bogus"), "{log}");
    // Nothing of that file applied: no queue functions.
    let r = w
        .call("iii::durable::publish", json!({"topic": "t", "data": 1}))
        .await;
    assert_eq!(r["error"]["code"], "function_not_found", "{r}");

    // Removing a mandatory entry is refused.
    let n = count(&e, "configuration reloaded with errors");
    write(
        &e,
        &format!(
            "workers:\n  - name: http\n    config: {{host: 127.0.0.1, port: {web}}}\n  - name: pubsub\n"
        ),
    );
    let log = wait_count(&e, "configuration reloaded with errors", n);
    assert!(
        log.contains("`iii-worker-manager` entry, which is mandatory"),
        "{log}"
    );
    assert!(publish(&mut w).await.get("error").is_none());

    // Removed: pubsub stops and its functions go.
    let n = count(&e, "configuration reloaded:");
    write(&e, &base(ws, web, ""));
    let log = wait_count(&e, "configuration reloaded:", n);
    assert!(log.contains(r#"removed ["pubsub"]"#), "{log}");
    assert_eq!(publish(&mut w).await["error"]["code"], "function_not_found");
    // The listing no longer names its worker.
    let r = w.call("engine::workers::list", json!({})).await;
    assert!(!r["result"].to_string().contains("iii-pubsub"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_http_entry_rebinds_and_keeps_its_routes_and_the_sockets_connections() {
    let (e, ws, web) = watched("");
    let mut w = RawWorker::connect_named(&e.url(), "router", None).await;
    w.register_function("hello::get", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "t-hello", "trigger_type": "http", "function_id": "hello::get", "config": {"api_path": "hello", "http_method": "GET"}})).await;
    w.sync().await;
    let req = tokio::spawn(get(web, "/hello", vec![]));
    serve(&mut w).await;
    assert_eq!(req.await.unwrap(), 200);

    // A new port: the new listener answers the same route (the binding was re-armed), the old
    // port stops answering.
    let web2 = free_port();
    let n = count(&e, "configuration reloaded:");
    write(&e, &base(ws, web2, ""));
    let log = wait_count(&e, "configuration reloaded:", n);
    assert!(log.contains(r#"changed ["http"]"#), "{log}");
    let req = tokio::spawn(get(web2, "/hello", vec![]));
    serve(&mut w).await;
    assert_eq!(req.await.unwrap(), 200);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", web)).is_err(),
        "the old port still accepts"
    );

    // CORS changes: the next response carries the new policy.
    let with_cors = |origin: &str| {
        base(ws, web2, "").replace(
            "default_timeout: 5000}",
            &format!("default_timeout: 5000, cors: {{allowed_origins: ['{origin}']}}}}"),
        )
    };
    for origin in ["https://a.example", "https://b.example"] {
        let n = count(&e, "configuration reloaded:");
        write(&e, &with_cors(origin));
        wait_count(&e, "configuration reloaded:", n);
        let req = tokio::spawn(tokio::task::spawn_blocking(move || {
            http(web2, "GET", "/hello", &[("Origin", origin)], b"")
        }));
        serve(&mut w).await;
        let (status, headers, _) = req.await.unwrap().unwrap();
        assert_eq!(status, 200);
        assert_eq!(
            header(&headers, "access-control-allow-origin"),
            Some(origin)
        );
    }

    // A changed worker socket entry (a second listener): the connection made before keeps
    // working, and the new listener accepts.
    let ws2 = free_port();
    let n = count(&e, "configuration reloaded:");
    write(
        &e,
        &with_cors("https://b.example").replace(
            "  - name: http\n",
            &format!("  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws2}}}\n  - name: http\n"),
        ),
    );
    let log = wait_count(&e, "configuration reloaded:", n);
    assert!(log.contains(r#"changed ["iii-worker-manager"]"#), "{log}");
    let r = w.call("engine::workers::list", json!({})).await;
    assert!(r.get("error").is_none(), "{r}");
    let mut w2 = RawWorker::connect(&format!("ws://127.0.0.1:{ws2}")).await;
    let r = w2.call("engine::workers::list", json!({})).await;
    assert!(r["result"].to_string().contains("router"), "{r}");
}

/// Answers the next invocation with a 200.
async fn serve(w: &mut RawWorker) {
    w.serve_one(|_| json!({"status_code": 200, "body": {"ok": true}}))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_builtin_value_is_followed_by_its_configuration_entry() {
    let (e, ws, web) = watched("");
    let mut w = RawWorker::connect_named(&e.url(), "follower", None).await;
    w.register_function("cfg::on_change", json!({})).await;
    w.send(json!({"type": "registertrigger", "id": "t-cfg", "trigger_type": "configuration", "function_id": "cfg::on_change", "config": {"configuration_id": "iii-http"}})).await;
    w.sync().await;
    let mut caller = RawWorker::connect(&e.url()).await;

    // A value set at run time is stored for the next start...
    let running = caller
        .call("configuration::get", json!({"id": "iii-http"}))
        .await["result"]["value"]
        .clone();
    let mut v = running.clone();
    v["cors"] = json!({"allowed_origins": ["https://set.example"]});
    let set = tokio::spawn(async move {
        let r = caller
            .call("configuration::set", json!({"id": "iii-http", "value": v}))
            .await;
        (caller, r)
    });
    let ev = w.serve_one(|_| Value::Null).await;
    assert_eq!(ev["data"]["event_type"], "configuration:updated", "{ev}");
    let (mut caller, r) = set.await.unwrap();
    assert!(r.get("error").is_none(), "{r}");
    let stored = std::fs::read_to_string(e.dir.join("config/iii-http.yaml")).unwrap();
    assert!(stored.contains("set.example"), "{stored}");

    // ... and a later edit of config.yaml applies, fires `updated`, and is what the stored
    // file says from then on, so the next start agrees with the running engine.
    write(
        &e,
        &base(ws, web, "").replace(
            "default_timeout: 5000}",
            "default_timeout: 5000, cors: {allowed_origins: ['https://file.example']}}",
        ),
    );
    let ev = w.serve_one(|_| Value::Null).await;
    assert_eq!(ev["data"]["event_type"], "configuration:updated", "{ev}");
    assert_eq!(
        ev["data"]["new_value"]["cors"]["allowed_origins"][0], "https://file.example",
        "{ev}"
    );
    let got = caller
        .call("configuration::get", json!({"id": "iii-http"}))
        .await;
    assert_eq!(
        got["result"]["value"]["cors"]["allowed_origins"][0], "https://file.example",
        "{got}"
    );
    let stored = std::fs::read_to_string(e.dir.join("config/iii-http.yaml")).unwrap();
    assert!(stored.contains("file.example"), "{stored}");
}
