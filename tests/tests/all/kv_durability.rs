//! Durability of the builtin kv adapter against the real binary: state far larger than the
//! adapter's memory survives SIGKILL and the engine boots with bounded memory; a flipped byte
//! mid-log stops start-up with a precise message, and `on_corruption: salvage` keeps the
//! records on both sides of the damage.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iii_tests::{iii_bin, EngineProc, RawWorker};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const MIB: usize = 1024 * 1024;

fn config(ws: u16, http: u16, state_extra: &str, kv_config: &str) -> String {
    format!(
        "workers:\n  - name: iii-worker-manager\n    config: {{host: 127.0.0.1, port: {ws}}}\n  - name: iii-http\n    config: {{host: 127.0.0.1, port: {http}}}\n  - name: iii-state\n    config: {{{state_extra}adapter: {{name: kv, config: {{{kv_config}}}}}}}\n"
    )
}

async fn ok(w: &mut RawWorker, f: &str, data: Value) -> Value {
    let r = w.call(f, data).await;
    assert!(r.get("error").is_none(), "{f} failed: {r}");
    r.get("result").cloned().unwrap_or(Value::Null)
}

fn state_log(e: &EngineProc) -> PathBuf {
    e.dir.join(".iii/data/state/kv.wal")
}

/// `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Waits until `needle` occurs `n` times in the engine's log; returns the log.
fn wait_for_count(e: &EngineProc, needle: &str, n: usize, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = e.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "`{needle}` not seen {n} times:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A 4 MiB JSON string value that differs per key.
fn big_value(i: usize) -> String {
    let unit = format!("{i:04}-abcdefghijklmnopqrstuvwxyz-");
    let mut s = unit.repeat(4 * MIB / unit.len() + 1);
    s.truncate(4 * MIB - 2); // with the quotes, 4 MiB of JSON
    s
}

/// Invocation ids of [`pipelined`] calls: a UUID whose last group is the call's number.
const ID_PREFIX: &str = "00000000-0000-4000-8000-";

/// Runs `n` calls of `function_id` with `data(i)` (JSON text), keeping `window` of them in
/// flight, and hands each answer's raw frame to `check(i, frame)`. The frames are built and
/// read as text: the answers carry 4 MiB values, and parsing each one in this debug-built test
/// would dominate its run time. The values used here are ASCII letters, digits and `-`, so a
/// frame holds `"error"` or the id prefix only where the engine put it.
async fn pipelined(
    w: &mut RawWorker,
    function_id: &str,
    n: usize,
    window: usize,
    data: impl Fn(usize) -> String,
    check: impl Fn(usize, &str),
) {
    let frame = |i: usize| {
        format!(
            "{{\"type\":\"invokefunction\",\"invocation_id\":\"{ID_PREFIX}{i:012}\",\"function_id\":\"{function_id}\",\"data\":{}}}",
            data(i)
        )
    };
    let (mut sent, mut done) = (0, 0);
    while done < n {
        while sent < n && sent - done < window {
            w.ws.send(Message::text(frame(sent))).await.expect("send");
            sent += 1;
        }
        let msg = tokio::time::timeout(Duration::from_secs(60), w.ws.next())
            .await
            .expect("no answer within 60 s")
            .expect("socket closed")
            .expect("socket error");
        let Message::Text(t) = msg else { continue };
        let t = t.as_str();
        if !t.contains("\"invocationresult\"") {
            continue;
        }
        let at = t.find(ID_PREFIX).expect("answer carries its invocation id") + ID_PREFIX.len();
        let i: usize = t[at..at + 12].parse().expect("call number");
        assert!(
            !t.contains("\"error\""),
            "call {i} failed: {}",
            &t[..t.len().min(500)]
        );
        check(i, t);
        done += 1;
    }
}

#[tokio::test]
async fn a_gib_of_state_survives_sigkill_and_the_engine_boots_with_bounded_memory() {
    let values = 256; // 256 × 4 MiB = 1 GiB
    let mut e =
        EngineProc::start_with(|ws, http| config(ws, http, "max_value_bytes: 8388608, ", ""));
    let mut w = RawWorker::connect(&e.url()).await;
    let t0 = Instant::now();
    pipelined(
        &mut w,
        "state::set",
        values,
        4,
        |i| {
            format!(
                "{{\"scope\":\"big\",\"key\":\"k{i}\",\"value\":\"{}\"}}",
                big_value(i)
            )
        },
        |_, _| {},
    )
    .await;
    let write_s = t0.elapsed().as_secs_f64();
    let rss_before = rss_kib(e.child.id());
    let log_bytes = std::fs::metadata(state_log(&e)).unwrap().len();
    assert!(log_bytes >= (values * 4 * MIB) as u64, "{log_bytes}");

    // Every write was acknowledged: kill the engine now.
    let t1 = Instant::now();
    e.kill9_and_restart();
    wait_for_count(&e, "state service ready", 2, Duration::from_secs(60));
    let restart_s = t1.elapsed().as_secs_f64();
    let rss_after_restart = rss_kib(e.child.id());

    let mut w = RawWorker::connect(&e.url()).await;
    let t2 = Instant::now();
    pipelined(
        &mut w,
        "state::get",
        values,
        4,
        |i| format!("{{\"scope\":\"big\",\"key\":\"k{i}\"}}"),
        |i, frame| {
            assert!(
                frame.contains(&format!("\"{}\"", big_value(i))),
                "k{i} did not read back intact (answer of {} bytes)",
                frame.len()
            )
        },
    )
    .await;
    let read_s = t2.elapsed().as_secs_f64();
    let rss_after_reads = rss_kib(e.child.id());

    // A list of the whole GiB cannot fit one call: a structured refusal, not a dead adapter.
    let r = w.call("state::list", json!({"scope": "big"})).await;
    let msg = r["error"].to_string();
    assert!(msg.contains("max_list_bytes"), "{r}");
    assert_eq!(
        ok(&mut w, "state::list_groups", json!({})).await,
        json!({"groups": ["big"]})
    );
    // … and the adapter still serves afterwards.
    let got = ok(&mut w, "state::get", json!({"scope": "big", "key": "k7"})).await;
    assert_eq!(got.as_str().map(str::len), Some(4 * MIB - 2));

    println!("| values | log bytes | write | restart (replay) | read back | RSS before kill | RSS after restart | RSS after reads |");
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {values} x 4 MiB | {log_bytes} | {write_s:.1} s | {restart_s:.2} s | {read_s:.1} s | {} MiB | {} MiB | {} MiB |",
        rss_before / 1024,
        rss_after_restart / 1024,
        rss_after_reads / 1024
    );
    let replay_line = e
        .log()
        .lines()
        .rfind(|l| l.contains("opened /data/kv.wal"))
        .unwrap_or_default()
        .to_string();
    println!("adapter: {replay_line}");
    assert!(
        rss_after_restart < 400 * 1024,
        "RSS after restart {} MiB",
        rss_after_restart / 1024
    );
    assert!(
        rss_after_reads < 400 * 1024,
        "RSS after reading 1 GiB back {} MiB",
        rss_after_reads / 1024
    );
}

/// Offsets of the records of a v2 kv log (each header: marker, u32 length, u32 crc).
fn record_offsets(path: &Path) -> Vec<usize> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"IIIKVWL2");
    let mut at = 8;
    let mut out = Vec::new();
    while at + 12 <= bytes.len() {
        assert_eq!(bytes[at], 0xFF, "record marker at {at}");
        out.push(at);
        at += 12 + u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
    }
    out
}

/// Runs the engine in `dir` expecting it to refuse to start; returns its output.
fn start_expecting_failure(dir: &Path) -> String {
    let mut child = Command::new(iii_bin())
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn iii");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!status.success(), "engine exited 0:\n{text}");
            return text;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "engine kept running on a damaged log:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The adapter's own value limit in the damage test, below the engine's frame limit.
const KV_LIMIT: &str = "max_value_bytes: 1048576";

#[tokio::test]
async fn a_flipped_byte_mid_log_refuses_start_and_salvage_keeps_both_sides() {
    let keys = 1000;
    let mut e = EngineProc::start_with(|ws, http| config(ws, http, "", KV_LIMIT));
    let mut w = RawWorker::connect(&e.url()).await;
    // A value larger than the adapter holds is refused at `set` with a structured
    // invalid-input error, and the adapter keeps serving.
    let r = w
        .call(
            "state::set",
            json!({"scope": "s", "key": "huge", "value": "x".repeat(2 * MIB)}),
        )
        .await;
    let msg = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("invalid input") || msg.contains("invalid-input"),
        "{r}"
    );
    assert!(msg.contains("max_value_bytes"), "{r}");
    assert_eq!(
        ok(&mut w, "state::get", json!({"scope": "s", "key": "huge"})).await,
        Value::Null
    );
    for i in 0..keys {
        ok(
            &mut w,
            "state::set",
            json!({"scope": "s", "key": format!("k{i}"), "value": {"i": i, "pad": "p".repeat(40)}}),
        )
        .await;
    }
    let _ = e.child.kill();
    let _ = e.child.wait();

    // Flip one byte inside the value of record 2 (key k2).
    let path = state_log(&e);
    let offs = record_offsets(&path);
    assert_eq!(offs.len(), keys);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = offs[2] + 40;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let out = start_expecting_failure(&e.dir);
    assert!(out.contains("kv.wal"), "names the file:\n{out}");
    assert!(
        out.contains(&format!("byte offset {}", offs[2])),
        "names the offset:\n{out}"
    );
    assert!(
        out.contains(&format!("{} valid records follow", keys - 3)),
        "counts the records after the damage:\n{out}"
    );
    assert!(
        out.contains("on_corruption: salvage"),
        "says the way out:\n{out}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "refusing leaves the log untouched"
    );

    // An unknown policy is a clear config error.
    let cfg = config(
        e.ws_port,
        e.http_port,
        "",
        "max_value_bytes: 1048576, on_corruption: ignore",
    );
    std::fs::write(e.dir.join("config.yaml"), cfg).unwrap();
    let out = start_expecting_failure(&e.dir);
    assert!(
        out.contains("on_corruption") && out.contains("\"salvage\""),
        "names the key and the values:\n{out}"
    );

    // Opt in to salvage: the engine starts and keeps both sides of the damage.
    let cfg = config(
        e.ws_port,
        e.http_port,
        "",
        "max_value_bytes: 1048576, on_corruption: salvage",
    );
    std::fs::write(e.dir.join("config.yaml"), cfg).unwrap();
    e.kill9_and_restart();
    let log = e.wait_for_log(&["on_corruption salvage: kept", "state service ready"]);
    assert!(
        log.contains(&format!(
            "kept {} valid records ({} keys)",
            keys - 1,
            keys - 1
        )),
        "{log}"
    );
    let saved: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("kv.wal.corrupt-"))
        .collect();
    assert_eq!(saved.len(), 1, "original saved beside the log");
    assert_eq!(
        std::fs::read(path.parent().unwrap().join(&saved[0])).unwrap(),
        bytes
    );

    let mut w = RawWorker::connect(&e.url()).await;
    for i in [0, 1, 3, 4, 500, keys - 1] {
        assert_eq!(
            ok(
                &mut w,
                "state::get",
                json!({"scope": "s", "key": format!("k{i}")})
            )
            .await,
            json!({"i": i, "pad": "p".repeat(40)}),
            "k{i}"
        );
    }
    assert_eq!(
        ok(&mut w, "state::get", json!({"scope": "s", "key": "k2"})).await,
        Value::Null,
        "the damaged record is the only loss"
    );
    let list = ok(&mut w, "state::list", json!({"scope": "s"})).await;
    assert_eq!(list.as_array().unwrap().len(), keys - 1);
}

/// CRC-32 (IEEE), bit by bit: enough to write a small log in the old format.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A state put in the v1 format the previous adapter wrote: `len | crc32(payload) | payload`.
fn v1_put(scope: &str, key: &str, value: &str) -> Vec<u8> {
    let mut p = vec![1u8, 0, 2];
    for part in [scope, key, value] {
        p.extend_from_slice(&(part.len() as u32).to_le_bytes());
        p.extend_from_slice(part.as_bytes());
    }
    let mut out = (p.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&crc32(&p).to_le_bytes());
    out.extend(p);
    out
}

#[tokio::test]
async fn a_data_directory_in_the_old_format_still_boots() {
    let mut e = EngineProc::start_with(|ws, http| config(ws, http, "", ""));
    let _ = e.child.kill();
    let _ = e.child.wait();
    let mut log = b"IIIKVWL1".to_vec();
    log.extend(v1_put("old", "a", r#"{"v":1}"#));
    log.extend(v1_put("old", "b", r#""two""#));
    log.extend(v1_put("old", "a", r#"{"v":11}"#));
    std::fs::write(state_log(&e), &log).unwrap();

    e.kill9_and_restart();
    e.wait_for_log(&["migrated the log from format v1 to v2"]);
    let mut w = RawWorker::connect(&e.url()).await;
    assert_eq!(
        ok(&mut w, "state::list", json!({"scope": "old"})).await,
        json!([{"v": 11}, "two"])
    );
    ok(
        &mut w,
        "state::set",
        json!({"scope": "old", "key": "c", "value": 3}),
    )
    .await;
    assert_eq!(
        &std::fs::read(state_log(&e)).unwrap()[..8],
        b"IIIKVWL2",
        "rewritten in the current format"
    );
    e.kill9_and_restart();
    let mut w = RawWorker::connect(&e.url()).await;
    assert_eq!(
        ok(&mut w, "state::list", json!({"scope": "old"})).await,
        json!([{"v": 11}, "two", 3])
    );
}
