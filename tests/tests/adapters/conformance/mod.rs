//! The same test bodies over every backend of a world. A backend is the `queue` service entry
//! (YAML under `workers:`) plus the server it needs, kept alive by the returned guard.

pub mod queue;

use iii_tests::rabbitmq::Broker;

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
