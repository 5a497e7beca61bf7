//! Function ids, trigger-type ids and other names the protocol itself fixes (PROTOCOL.md §3.4,
//! §3.8, §4.6, §5, §6). Clients call these by name, so they are part of the wire contract and
//! defined once, here.
//!
//! Function ids of the services (`state::*`, `stream::*`, `publish`, …) belong to the services
//! that register them; this module holds the `engine::*` ids the core and the protocol depend
//! on and the trigger-type ids the protocol ships.

/// The namespace that calls, triggers and providers use when none is given, and the only
/// namespace `engine::*` ids may live in (§3.8).
pub const DEFAULT_NAMESPACE: &str = "default";

/// The prefix reserved for engine-owned functions and trigger types. A worker registering an
/// id with it outside [`DEFAULT_NAMESPACE`] gets `FUNCTION_NAMESPACE_CONFLICT` (§3.8), and
/// discovery listings hide these ids unless `include_internal` is set (§5.1).
pub const ENGINE_PREFIX: &str = "engine::";

/// The key the engine adds to an object payload a worker sends, holding the caller's
/// `worker_id` (§3.3). `engine::workers::register` relies on it.
pub const CALLER_WORKER_ID_KEY: &str = "_caller_worker_id";

/// Engine function ids (§5.1, §5.2, §3.4, §6).
pub mod functions {
    /// The handshake call every SDK makes after its registrations: declares the worker's name,
    /// runtime and namespace, ends namespace buffering and claims the worker name (§2.4, §3.8).
    pub const WORKERS_REGISTER: &str = "engine::workers::register";
    /// Lists connected and in-process workers (§5.1).
    pub const WORKERS_LIST: &str = "engine::workers::list";
    /// Details of one worker by name (§5.1).
    pub const WORKERS_INFO: &str = "engine::workers::info";
    /// Lists registered functions (§5.1).
    pub const FUNCTIONS_LIST: &str = "engine::functions::list";
    /// Description and request/response schemas of one function or a batch of at most
    /// [`FUNCTIONS_INFO_BATCH_MAX`] (§5.1); `iii trigger <fn> --help` uses it (§10).
    pub const FUNCTIONS_INFO: &str = "engine::functions::info";
    /// Lists trigger types (§5.1).
    pub const TRIGGERS_LIST: &str = "engine::triggers::list";
    /// Our alias of [`TRIGGERS_LIST`], named after what it lists.
    pub const TRIGGER_TYPES_LIST: &str = "engine::trigger-types::list";
    /// Details and schemas of one trigger type (§4.7, §5.1).
    pub const TRIGGERS_INFO: &str = "engine::triggers::info";
    /// Lists trigger bindings (§5.1).
    pub const REGISTERED_TRIGGERS_LIST: &str = "engine::registered-triggers::list";
    /// Details of one trigger binding (§5.1).
    pub const REGISTERED_TRIGGERS_INFO: &str = "engine::registered-triggers::info";
    /// Registers a binding owned by no connection; it survives its caller (§4.2).
    pub const REGISTER_TRIGGER: &str = "engine::register_trigger";
    /// Removes a binding by id (§5.1).
    pub const UNREGISTER_TRIGGER: &str = "engine::unregister_trigger";
    /// Creates a data channel and returns its writer and reader refs (§6).
    pub const CHANNELS_CREATE: &str = "engine::channels::create";
    /// The target of `action: {"type":"enqueue"}`: the engine hands every enqueued call to the
    /// function registered under this id in [`DEFAULT_NAMESPACE`](super::DEFAULT_NAMESPACE)
    /// (§3.4). A queue service provides it.
    pub const QUEUE_ENQUEUE: &str = "engine::queue::enqueue";
    /// Prefix of the queue console functions, which discovery lists although they are
    /// `engine::*` (§5.1, §5.5).
    pub const QUEUE_PREFIX: &str = "engine::queue::";
    /// Writes an OTEL log record at info severity (§5.2).
    pub const LOG_INFO: &str = "engine::log::info";
    /// Writes an OTEL log record at warn severity (§5.2).
    pub const LOG_WARN: &str = "engine::log::warn";
    /// Writes an OTEL log record at error severity (§5.2).
    pub const LOG_ERROR: &str = "engine::log::error";
    /// Writes an OTEL log record at debug severity (§5.2).
    pub const LOG_DEBUG: &str = "engine::log::debug";
    /// Writes an OTEL log record at trace severity (§5.2).
    pub const LOG_TRACE: &str = "engine::log::trace";
    /// Reads one baggage entry (diagnostic, §5.2).
    pub const BAGGAGE_GET: &str = "engine::baggage::get";
    /// Sets a baggage entry, without propagation (§5.2).
    pub const BAGGAGE_SET: &str = "engine::baggage::set";
    /// Reads every baggage entry (diagnostic, §5.2).
    pub const BAGGAGE_GET_ALL: &str = "engine::baggage::get_all";
    /// Engine health summary (§5.2).
    pub const HEALTH_CHECK: &str = "engine::health::check";

    /// The most ids one `engine::functions::info` batch may ask for (§5.1).
    pub const FUNCTIONS_INFO_BATCH_MAX: usize = 32;

    /// Functions RBAC always allows, whatever the session's grants, unless the session lists
    /// them in `forbidden_functions` (§5.2, §9.3).
    pub const INFRASTRUCTURE: [&str; 10] = [
        CHANNELS_CREATE,
        WORKERS_REGISTER,
        LOG_INFO,
        LOG_WARN,
        LOG_ERROR,
        LOG_DEBUG,
        LOG_TRACE,
        BAGGAGE_GET,
        BAGGAGE_SET,
        BAGGAGE_GET_ALL,
    ];
}

/// Trigger-type ids the protocol ships (§4.6). The engine core provides the two
/// `engine::*-available` types; the services provide the rest.
pub mod trigger_types {
    /// Fires `{"event":"functions_changed","functions":[…]}` when the set of registered
    /// functions changes (polled every 5 s, §4.6.9).
    pub const FUNCTIONS_AVAILABLE: &str = "engine::functions-available";
    /// Fires `{"event", "worker_id"}` when a worker connects, disconnects or registers
    /// (§4.6.9); the events are in [`events`](super::events).
    pub const WORKERS_AVAILABLE: &str = "engine::workers-available";
    /// HTTP routes on the REST trigger server (§4.6.1).
    pub const HTTP: &str = "http";
    /// Scheduled fires from a 6- or 7-field cron expression (§4.6.2).
    pub const CRON: &str = "cron";
    /// Fires after every successful state write (§4.6.3).
    pub const STATE: &str = "state";
    /// Fires on stream item changes and `stream::send` events (§4.6.4).
    pub const STREAM: &str = "stream";
    /// Fires when a stream-socket client subscribes (§4.6.4).
    pub const STREAM_JOIN: &str = "stream:join";
    /// Fires when a stream-socket subscription ends (§4.6.4).
    pub const STREAM_LEAVE: &str = "stream:leave";
    /// Pub/sub topic subscription (§4.6.5).
    pub const SUBSCRIBE: &str = "subscribe";
    /// Durable queue topic subscription (§4.6.6).
    pub const DURABLE_SUBSCRIBER: &str = "durable:subscriber";
    /// Configuration entry changes (§4.6.7).
    pub const CONFIGURATION: &str = "configuration";
    /// OTEL log records (§4.6.8).
    pub const LOG: &str = "log";
    /// Completed traces (§4.6.8).
    pub const TRACE: &str = "trace";
}

/// The `event` values of the `engine::*-available` trigger payloads (§4.6.9, §1.2, §3.6).
pub mod events {
    /// A connection finished its handshake and got a `worker_id`.
    pub const WORKER_CONNECTED: &str = "worker_connected";
    /// A connection's disconnect cleanup finished.
    pub const WORKER_DISCONNECTED: &str = "worker_disconnected";
    /// A worker called `engine::workers::register`.
    pub const WORKER_METADATA_UPDATED: &str = "worker_metadata_updated";
    /// The set of `(namespace, function_id)` changed.
    pub const FUNCTIONS_CHANGED: &str = "functions_changed";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<&'static str> {
        use functions::*;
        use trigger_types::*;
        vec![
            WORKERS_REGISTER,
            WORKERS_LIST,
            WORKERS_INFO,
            FUNCTIONS_LIST,
            FUNCTIONS_INFO,
            TRIGGERS_LIST,
            TRIGGER_TYPES_LIST,
            TRIGGERS_INFO,
            REGISTERED_TRIGGERS_LIST,
            REGISTERED_TRIGGERS_INFO,
            REGISTER_TRIGGER,
            UNREGISTER_TRIGGER,
            CHANNELS_CREATE,
            QUEUE_ENQUEUE,
            LOG_INFO,
            LOG_WARN,
            LOG_ERROR,
            LOG_DEBUG,
            LOG_TRACE,
            BAGGAGE_GET,
            BAGGAGE_SET,
            BAGGAGE_GET_ALL,
            HEALTH_CHECK,
            FUNCTIONS_AVAILABLE,
            WORKERS_AVAILABLE,
            HTTP,
            CRON,
            STATE,
            STREAM,
            STREAM_JOIN,
            STREAM_LEAVE,
            SUBSCRIBE,
            DURABLE_SUBSCRIBER,
            CONFIGURATION,
            LOG,
            TRACE,
        ]
    }

    #[test]
    fn engine_ids_carry_the_reserved_prefix() {
        for id in all().into_iter().filter(|i| i.contains("::")) {
            assert!(id.starts_with(ENGINE_PREFIX), "{id}");
        }
        assert!(functions::QUEUE_ENQUEUE.starts_with(functions::QUEUE_PREFIX));
        assert!(functions::INFRASTRUCTURE
            .iter()
            .all(|id| id.starts_with(ENGINE_PREFIX)));
    }

    #[test]
    fn ids_are_distinct_and_documented_in_protocol_md() {
        let doc = include_str!("../PROTOCOL.md");
        let ids = all();
        for (i, id) in ids.iter().enumerate() {
            assert!(!ids[..i].contains(id), "{id} defined twice");
            assert!(
                doc.contains(&format!("`{id}`")),
                "{id} is not mentioned in PROTOCOL.md"
            );
        }
    }
}
