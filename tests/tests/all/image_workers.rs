//! Image workers (`- name: <own name>` with `image:`): the engine runs each through
//! `iii-worker-host` in a namespace sandbox. The image is a real OCI layout holding a real
//! worker (the `hello-worker` example of `vmm/worker-host`, on the official Rust SDK) and a
//! busybox-static root. Checked as a user sees it: the function answers through the engine with
//! the entry's `config:` in its environment; a killed workload comes back; a reload that
//! removes the entry stops it and leaves no sandbox; a reload that adds it starts it; an engine
//! SIGKILL takes the worker host and its sandbox with it.
//!
//! Needs root (namespaces, mounts, cgroups), busybox-static and cargo (the test builds the
//! worker host, the example worker and `iii-init` so they match this checkout).

use std::process::Command;
use std::time::{Duration, Instant};

use iii_tests::RawWorker;

use super::image_fixture::*;

#[tokio::test]
async fn an_image_worker_serves_comes_back_and_follows_reloads() {
    let s = start("hello", true);
    let mut w = RawWorker::connect(&s.engine.url()).await;
    let r = until_greets(&mut w, &s.engine).await;
    // The entry's config (flattened) overrides the image's ENV; the image's WorkingDir holds.
    assert_eq!(r["greeting"], "howdy, tester", "{r}");
    assert_eq!(r["worker"], "hello", "{r}");
    assert_eq!(r["cwd"], "/tmp", "{r}");
    let first = sandboxes(s.root.path());
    assert_eq!(first.len(), 1, "one sandbox: {first:?}");
    // Its output reaches the engine's log under its name.
    s.engine
        .wait_for_log(&["hello-worker hello connecting to ws://127.0.0.1:"]);

    // The workload dies: the worker host stops the sandbox and exits; the engine restarts it.
    let pids = workloads(s.ws);
    assert_eq!(pids.len(), 1, "one workload: {pids:?}");
    Command::new("kill")
        .args(["-KILL", &pids[0].to_string()])
        .status()
        .unwrap();
    s.engine.wait_for_log(&["hello exited", "restarting in 1s"]);
    let r = until_greets(&mut w, &s.engine).await;
    assert_eq!(r["greeting"], "howdy, tester", "{r}");
    eventually(
        Duration::from_secs(30),
        "the first sandbox stayed",
        &s.engine,
        || {
            let now = sandboxes(s.root.path());
            now.len() == 1 && now != first
        },
    );

    assert_eq!(hosts(s.ws).len(), 1);

    // A reload that removes the entry stops it: no worker host, no sandbox, no function.
    write_config(&s.engine, &config(s.ws, ""));
    eventually(
        Duration::from_secs(30),
        "the removed worker's sandbox or host stayed",
        &s.engine,
        || sandboxes(s.root.path()).is_empty() && hosts(s.ws).is_empty(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = greet(&mut w).await;
        if !r["error"].is_null() {
            break;
        }
        assert!(Instant::now() < deadline, "hello::greet still answers: {r}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Added back: it starts again.
    write_config(&s.engine, &config(s.ws, &entry("hello")));
    let r = until_greets(&mut w, &s.engine).await;
    assert_eq!(r["worker"], "hello", "{r}");
    let host = hosts(s.ws);
    assert_eq!(host.len(), 1, "{host:?}");

    // A reload that adds a second worker keeps the first one's host running.
    write_config(
        &s.engine,
        &config(s.ws, &format!("{}{}", entry("hello"), entry("hello-two"))),
    );
    eventually(
        Duration::from_secs(60),
        "the second worker did not start",
        &s.engine,
        || sandboxes(s.root.path()).len() == 2,
    );
    assert!(alive(host[0]), "an unchanged worker was restarted");

    // A changed entry restarts (new host process), the other keeps its host.
    let two: Vec<u32> = hosts(s.ws).into_iter().filter(|p| *p != host[0]).collect();
    assert_eq!(two.len(), 1, "{two:?}");
    write_config(
        &s.engine,
        &config(
            s.ws,
            &format!(
                "{}{}",
                entry("hello"),
                entry("hello-two").replace("howdy", "hi")
            ),
        ),
    );
    eventually(
        Duration::from_secs(60),
        "the changed worker did not restart",
        &s.engine,
        || {
            let now = hosts(s.ws);
            !alive(two[0]) && now.len() == 2 && now.contains(&host[0])
        },
    );
    eventually(
        Duration::from_secs(60),
        "the changed worker left a sandbox or did not start one",
        &s.engine,
        || sandboxes(s.root.path()).len() == 2 && workloads(s.ws).len() == 2,
    );

    // The engine stops the way a service manager stops it: every worker and sandbox goes.
    let mut s = s;
    Command::new("kill")
        .args(["-TERM", &s.engine.child.id().to_string()])
        .status()
        .unwrap();
    let status = s.engine.child.wait().unwrap();
    assert!(
        status.success(),
        "engine exit {status}:\n{}",
        s.engine.log()
    );
    assert!(hosts(s.ws).is_empty(), "worker hosts outlived the engine");
    assert!(
        sandboxes(s.root.path()).is_empty(),
        "sandboxes outlived the engine: {:?}\n{}",
        sandboxes(s.root.path()),
        s.engine.log()
    );
}

#[tokio::test]
async fn an_engine_sigkill_takes_the_worker_host_and_its_sandbox() {
    let mut s = start("hello-k", false);
    let mut w = RawWorker::connect(&s.engine.url()).await;
    until_greets(&mut w, &s.engine).await;
    let host = hosts(s.ws);
    assert_eq!(host.len(), 1, "{host:?}");
    assert_eq!(sandboxes(s.root.path()).len(), 1);
    let _ = s.engine.child.kill();
    let _ = s.engine.child.wait();
    eventually(
        Duration::from_secs(30),
        "the worker host outlived the engine",
        &s.engine,
        || !alive(host[0]),
    );
    // The worker host stops its sandbox on the way out: nothing stays.
    eventually(
        Duration::from_secs(30),
        "the sandbox or its workload outlived the engine",
        &s.engine,
        || sandboxes(s.root.path()).is_empty() && workloads(s.ws).is_empty(),
    );
    // The engine comes back: so does the worker.
    s.engine.kill9_and_restart();
    let mut w = RawWorker::connect(&s.engine.url()).await;
    until_greets(&mut w, &s.engine).await;
    assert_eq!(sandboxes(s.root.path()).len(), 1);
}

#[test]
fn image_entries_are_validated_before_anything_starts() {
    let b = built();
    for (extra, needle) in [
        (
            "  - name: w\n    image: \"\"\n".to_string(),
            "image reference",
        ),
        (
            format!(
                "  - name: w\n    image: {}\n    config: [1]\n",
                b.layout.display()
            ),
            "a mapping of settings",
        ),
        (
            format!(
                "  - name: w\n    image: {}\n    extra: 1\n",
                b.layout.display()
            ),
            "extra",
        ),
        (
            format!(
                "  - name: w\n    image: {0}\n  - name: w\n    image: {0}\n",
                b.layout.display()
            ),
            "listed twice",
        ),
        ("  - name: iii-image-workers\n".to_string(), "reserved"),
    ] {
        let err = refused_at_start(&extra);
        assert!(err.contains(needle), "{extra}: no {needle:?} in: {err}");
    }
}
