//! One body per behaviour, run over every backend of the world. A backend is a config
//! snippet for the service's `adapter:` key (or, for the queue, the whole service entry) plus
//! the server it needs (kept alive by the test).

mod lock;
mod pubsub;
pub mod queue;
mod state;
mod stream;

use iii_tests::rabbitmq::Broker;
use iii_tests::redis::Server;

/// A backend under test: its `adapter:` value (flow YAML) and the server behind it.
pub struct Backend {
    pub name: &'static str,
    pub adapter: String,
    /// What serves the backend (a Redis server, the remote engine of a bridge).
    _server: Option<Box<dyn std::any::Any>>,
}

impl Backend {
    fn plain(name: &'static str, adapter: &str) -> Backend {
        Backend {
            name,
            adapter: adapter.to_string(),
            _server: None,
        }
    }

    fn redis() -> Backend {
        let s = Server::start();
        Backend {
            name: "redis",
            adapter: format!("{{name: redis, config: {{redis_url: '{}'}}}}", s.url()),
            _server: Some(Box::new(s)),
        }
    }

    /// `name: bridge` to a second engine whose state and stream are on in-memory kv.
    fn bridge() -> Backend {
        let remote = iii_tests::EngineProc::start_with(|ws, sp| {
            crate::engine_config(
                ws,
                &format!("  - name: iii-state\n    config: {{adapter: {{name: kv, config: {{store_method: in_memory}}}}}}\n  - name: iii-stream\n    config: {{port: {sp}, host: 127.0.0.1, adapter: {{name: kv, config: {{store_method: in_memory}}}}}}\n"),
            )
        });
        Backend {
            name: "bridge",
            adapter: format!(
                "{{name: bridge, config: {{bridge_url: '{}'}}}}",
                remote.url()
            ),
            _server: Some(Box::new(remote)),
        }
    }
}

/// State and stream backends.
pub fn store_backends() -> Vec<Backend> {
    vec![
        Backend::plain("kv", "{name: kv, config: {store_method: in_memory}}"),
        Backend::redis(),
        Backend::bridge(),
    ]
}

/// Pub/sub backends.
pub fn bus_backends() -> Vec<Backend> {
    vec![Backend::plain("local", "{name: local}"), Backend::redis()]
}

/// Cron lock backends.
pub fn lock_backends() -> Vec<Backend> {
    vec![Backend::plain("local", "{name: kv}"), Backend::redis()]
}

/// One backend of the queue world.
#[derive(Clone, Copy, Debug)]
pub enum QueueBackend {
    /// The embedded durable queue (in memory here).
    Builtin,
    /// `name: rabbitmq` on the test process's shared broker.
    RabbitMq,
}

/// Every queue backend.
pub const QUEUE_BACKENDS: &[QueueBackend] = &[QueueBackend::Builtin, QueueBackend::RabbitMq];

impl QueueBackend {
    /// The `queue` service entry for this backend, with `extra` adapter config lines (`k: v`).
    pub fn entry(self, extra: &str) -> String {
        match self {
            QueueBackend::Builtin => format!(
                "  - name: queue\n    config:\n      adapter:\n        name: builtin\n        config: {{store_method: in_memory{extra}}}\n"
            ),
            QueueBackend::RabbitMq => format!(
                "  - name: queue\n    config:\n      adapter:\n        name: rabbitmq\n        config: {{amqp_url: \"{}\"{extra}}}\n",
                Broker::shared().url()
            ),
        }
    }
}
