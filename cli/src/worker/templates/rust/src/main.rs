//! {{worker_name}}: an iii worker on the official Rust SDK (crates.io iii-sdk).
//! Run it against an engine: III_URL=ws://localhost:49134 cargo run
//! Call it: iii trigger {{worker_name}}::hello --json '{"name": "you"}'

use iii_sdk::runtime::WorkerMetadata;
use iii_sdk::{register_worker, InitOptions, RegisterFunction};
use serde_json::{json, Value};

const WORKER_NAME: &str = "{{worker_name}}";

#[tokio::main]
async fn main() {
    let url = std::env::var("III_URL").unwrap_or_else(|_| "ws://localhost:49134".to_string());
    let iii = register_worker(
        &url,
        InitOptions {
            metadata: Some(WorkerMetadata {
                name: WORKER_NAME.to_string(),
                ..WorkerMetadata::default()
            }),
            ..InitOptions::default()
        },
    );
    iii.register_function(
        format!("{WORKER_NAME}::hello"),
        RegisterFunction::new_async(|input: Value| async move {
            let name = input["name"].as_str().ok_or("pass {\"name\": \"...\"}")?;
            Ok(json!({ "message": format!("Hello, {name}!") }))
        })
        .description("Greets the caller"),
    );
    println!("{WORKER_NAME} connected to {url}");
    let _ = tokio::signal::ctrl_c().await;
    iii.shutdown_async().await;
}
