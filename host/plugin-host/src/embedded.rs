//! First-party plugins compiled into the binary by `build.rs`.

/// The builtin kv adapter (`plugins/kv`), a `wasm32-wasip2` component.
pub static KV_WASM: &[u8] = include_bytes!(env!("III_KV_WASM"));

/// The builtin queue adapter (`plugins/queue`), a `wasm32-wasip2` component.
pub static QUEUE_WASM: &[u8] = include_bytes!(env!("III_QUEUE_WASM"));

/// The RabbitMQ queue adapter (`plugins/rabbitmq`), a `wasm32-wasip2` component.
pub static RABBITMQ_WASM: &[u8] = include_bytes!(env!("III_RABBITMQ_WASM"));

/// The Redis adapter (`plugins/redis`): state, stream, pub/sub and lock in one component.
pub static REDIS_WASM: &[u8] = include_bytes!(env!("III_REDIS_WASM"));

/// Names accepted by `adapter: {name: …}`.
pub const NAMES: &[&str] = &["kv", "queue", "rabbitmq", "redis"];

/// The embedded component registered under `name`.
pub fn lookup(name: &str) -> Option<&'static [u8]> {
    match name {
        "kv" => Some(KV_WASM),
        "queue" => Some(QUEUE_WASM),
        "rabbitmq" => Some(RABBITMQ_WASM),
        "redis" => Some(REDIS_WASM),
        _ => None,
    }
}
