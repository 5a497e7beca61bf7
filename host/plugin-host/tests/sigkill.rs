//! Durability across SIGKILL: a child process loads a builtin adapter with a
//! data directory, acknowledges changes on stdout, and is killed with
//! SIGKILL right after an acknowledgement; the parent then reloads and
//! checks every acknowledged change. Once for kv, once for the queue.
//!
//! Custom harness (`harness = false`) because the same binary is the child.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use iii_adapter_api::queue::{LeaseRequest, NewMessage};
use iii_plugin_host::{AdapterSpec, Grants, HostConfig, PluginHost, QueueWorld, StateWorld};
use serde_json::json;

const CHILD_ENV: &str = "III_SIGKILL_CHILD_DIR";
/// Which adapter the child drives: `kv` or `queue`.
const CHILD_ADAPTER_ENV: &str = "III_SIGKILL_CHILD_ADAPTER";

fn spec(name: &str, dir: &std::path::Path) -> AdapterSpec {
    AdapterSpec::named(name).with_grants(Grants {
        data_dir: Some(dir.to_path_buf()),
        ..Grants::default()
    })
}

const ONE: LeaseRequest = LeaseRequest {
    max: 1,
    lease_ms: 600_000,
    fifo: false,
};

fn queue_msg(id: String, i: u64) -> NewMessage {
    NewMessage {
        id,
        payload: json!({"i": i}),
        meta: json!({}),
        group: None,
        max_attempts: 3,
        delay_ms: 0,
    }
}

/// Per round: `keep/k<i>` is enqueued and leased (so it is in flight when
/// the kill comes), `done/d<i>` is enqueued, leased and acked.
fn queue_child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let q = host
            .load_adapter::<QueueWorld>(&spec("queue", dir.as_ref()))
            .await
            .unwrap();
        let mut i = 0u64;
        loop {
            q.enqueue("keep", &queue_msg(format!("k{i}"), i))
                .await
                .unwrap();
            q.lease("keep", ONE).await.unwrap();
            q.enqueue("done", &queue_msg(format!("d{i}"), i))
                .await
                .unwrap();
            let d = q.lease("done", ONE).await.unwrap().deliveries.remove(0);
            assert!(q.ack("done", &d.token).await.unwrap());
            // Only now are this round's changes acknowledged.
            println!("ack {i}");
            i += 1;
        }
    });
}

fn queue_check(dir: &std::path::Path, last: u64) -> Result<(), String> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).map_err(|e| e.to_string())?;
        let q = host
            .load_adapter::<QueueWorld>(&spec("queue", dir))
            .await
            .map_err(|e| e.to_string())?;
        let all = LeaseRequest {
            max: 10_000,
            ..ONE
        };
        let keep = q.lease("keep", all).await.map_err(|e| e.to_string())?;
        let got: Vec<&str> = keep.deliveries.iter().map(|d| d.message_id.as_str()).collect();
        for i in 0..=last {
            let want = format!("k{i}");
            if got.get(i as usize).copied() != Some(want.as_str()) {
                return Err(format!(
                    "acknowledged message {want}, leased when the engine died, is not back in order after SIGKILL (got {:?})",
                    got.get(i as usize)
                ));
            }
        }
        let done = q.lease("done", all).await.map_err(|e| e.to_string())?;
        // Only the round the kill interrupted may have left its message.
        if let Some(d) = done
            .deliveries
            .iter()
            .find(|d| d.message_id != format!("d{}", last + 1))
        {
            return Err(format!("acked message {} came back after SIGKILL", d.message_id));
        }
        Ok(())
    })
}

fn kv_child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let s = host
            .load_adapter::<StateWorld>(&spec("kv", dir.as_ref()))
            .await
            .unwrap();
        let mut i = 0u64;
        loop {
            s.set("acked", &i.to_string(), &json!({"i": i}))
                .await
                .unwrap();
            // Only now is the write acknowledged.
            println!("ack {i}");
            i += 1;
        }
    });
}

/// Runs a child driving `adapter`, SIGKILLs it after acknowledgement 200,
/// and returns the data directory and the last acknowledgement.
fn run_and_kill(adapter: &str) -> Result<(tempfile::TempDir, u64), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(CHILD_ENV, dir.path())
        .env(CHILD_ADAPTER_ENV, adapter)
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = BufReader::new(c.stdout.take().unwrap()).lines();
    let mut last = None;
    while let Some(Ok(line)) = lines.next() {
        let n: u64 = line
            .trim_start_matches("ack ")
            .parse()
            .map_err(|_| line.clone())?;
        last = Some(n);
        if n == 200 {
            // SIGKILL straight after an acknowledgement: no destructor,
            // no flush, nothing runs in the child.
            c.kill().map_err(|e| e.to_string())?;
            break;
        }
    }
    c.wait().map_err(|e| e.to_string())?;
    let last = last.ok_or("child acknowledged nothing")?;
    Ok((dir, last))
}

fn kv_parent() -> Result<(), String> {
    let (dir, last) = run_and_kill("kv")?;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).map_err(|e| e.to_string())?;
        let s = host
            .load_adapter::<StateWorld>(&spec("kv", dir.path()))
            .await
            .map_err(|e| e.to_string())?;
        for i in 0..=last {
            let v = s
                .get("acked", &i.to_string())
                .await
                .map_err(|e| e.to_string())?;
            if v != Some(json!({"i": i})) {
                return Err(format!(
                    "acknowledged write {i} lost after SIGKILL (got {v:?})"
                ));
            }
        }
        Ok(())
    })
}

/// One check of this harness: `Err` says what was lost.
type Test = fn() -> Result<(), String>;

fn queue_parent() -> Result<(), String> {
    let (dir, last) = run_and_kill("queue")?;
    queue_check(dir.path(), last)
}

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        match std::env::var(CHILD_ADAPTER_ENV).as_deref() {
            Ok("queue") => queue_child(&dir),
            _ => kv_child(&dir),
        }
        return;
    }
    let tests: [(&str, Test); 2] = [
        ("acknowledged_writes_survive_sigkill", kv_parent),
        ("acknowledged_queue_changes_survive_sigkill", queue_parent),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        print!("test {name} ... ");
        match test() {
            Ok(()) => println!("ok"),
            Err(e) => {
                println!("FAILED\n{e}");
                failed += 1;
            }
        }
    }
    let passed = tests.len() - failed;
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out"
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
