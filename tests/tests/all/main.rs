//! The black-box tests: each module starts the real `iii` binary and talks to it as a user
//! would (raw WebSocket worker, plain HTTP, the CLI). One test binary, a module per topic, so
//! the harness links once. `zero_loss` stays a binary of its own (long; run in release mode
//! for figures).

mod cli;
mod configuration;
mod container_workers;
mod external_daemon;
mod hardening_core;
mod hardening_http;
mod help;
mod hot_reload;
mod http_functions;
mod http_middleware;
mod http_trigger;
mod image_fixture;
mod image_workers;
mod kv_durability;
mod lang_policies;
mod local_workers;
mod observability;
mod policies;
mod project;
mod pubsub_cron;
mod queue;
mod rbac;
mod rbac_policies;
mod sandbox;
mod state_stream;
mod stream_socket;
mod update_cloud;
mod validation;
mod wire;
mod worker_cli;
mod worker_exec;
mod worker_lifecycle;
mod worker_registry;
