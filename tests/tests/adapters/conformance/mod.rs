//! One body per behaviour, run over every backend of the world. A backend is a config
//! snippet for the service's `adapter:` key plus the server it needs (kept alive by the test).

mod lock;
mod pubsub;
mod state;
mod stream;

use iii_tests::redis::Server;

/// A backend under test: its `adapter:` value (flow YAML) and the server behind it.
pub struct Backend {
    pub name: &'static str,
    pub adapter: String,
    _server: Option<Server>,
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
            _server: Some(s),
        }
    }
}

/// State and stream backends.
pub fn store_backends() -> Vec<Backend> {
    vec![
        Backend::plain("kv", "{name: kv, config: {store_method: in_memory}}"),
        Backend::redis(),
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
