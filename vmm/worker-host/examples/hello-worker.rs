//! A minimal image worker on the official Rust SDK: connects to `III_URL` as
//! `III_WORKER_NAME` and registers `hello::greet`, which answers with its name, the value of
//! `GREETING_WORD` (from the entry's `config: {greeting: {word: …}}`) and its pid. The
//! black-box tests package it into an OCI image and run it under `iii-worker-host`.

use iii_sdk::{InitOptions, RegisterFunction};
use serde_json::{json, Value};

#[tokio::main]
async fn main() {
    let url = std::env::var("III_URL").unwrap_or_else(|_| "ws://127.0.0.1:49134".into());
    let name = std::env::var("III_WORKER_NAME").unwrap_or_else(|_| "hello-worker".into());
    let meta = iii_sdk::iii::WorkerMetadata {
        name: name.clone(),
        description: Some("hello::greet, for the image worker tests".into()),
        ..Default::default()
    };
    let iii = iii_sdk::register_worker(
        &url,
        InitOptions {
            metadata: Some(meta),
            ..Default::default()
        },
    );
    let worker = name.clone();
    iii.register_function(
        "hello::greet",
        RegisterFunction::new_async(move |input: Value| {
            let worker = worker.clone();
            async move {
                let who = input
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("world")
                    .to_string();
                let word = std::env::var("GREETING_WORD").unwrap_or_else(|_| "hello".into());
                Ok::<Value, iii_sdk::Error>(json!({
                    "greeting": format!("{word}, {who}"),
                    "worker": worker,
                    "pid": std::process::id(),
                    "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
                }))
            }
        })
        .description("Greets"),
    );
    println!("hello-worker {name} connecting to {url}");
    let _ = tokio::signal::ctrl_c().await;
}
