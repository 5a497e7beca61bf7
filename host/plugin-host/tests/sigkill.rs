//! Durability across SIGKILL: a child process loads the kv adapter with a
//! data directory, acknowledges writes on stdout, and is killed with
//! SIGKILL right after an acknowledgement; the parent then reloads and
//! reads every acknowledged value back.
//!
//! Custom harness (`harness = false`) because the same binary is the child.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use iii_plugin_host::{AdapterSpec, Grants, HostConfig, PluginHost, StateWorld};
use serde_json::json;

const CHILD_ENV: &str = "III_SIGKILL_CHILD_DIR";

fn spec(dir: &std::path::Path) -> AdapterSpec {
    AdapterSpec::named("kv").with_grants(Grants {
        data_dir: Some(dir.to_path_buf()),
        ..Grants::default()
    })
}

fn child(dir: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).unwrap();
        let s = host
            .load_adapter::<StateWorld>(&spec(dir.as_ref()))
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

fn parent() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut c = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .env(CHILD_ENV, dir.path())
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
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let host = PluginHost::new(HostConfig::default()).map_err(|e| e.to_string())?;
        let s = host
            .load_adapter::<StateWorld>(&spec(dir.path()))
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

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(&dir);
        return;
    }
    print!("test acknowledged_writes_survive_sigkill ... ");
    match parent() {
        Ok(()) => {
            println!(
                "ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
            );
        }
        Err(e) => {
            println!("FAILED\n{e}\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out");
            std::process::exit(1);
        }
    }
}
