//! The catalogue of wire error codes (PROTOCOL.md §2.1, Appendix A).
//!
//! A code is the `code` string of an [`ErrorBody`](crate::ErrorBody) (an `invocationresult`
//! error or a `triggerregistrationresult` error), of a `registrationrejected` frame, of the
//! handshake `error` frame, or of an HTTP error envelope `{"error":{"code",…}}`. Clients match
//! on these strings, so each one is defined exactly once, here, and every sender uses the
//! constant instead of a literal.
//!
//! The spellings mix conventions because most are upstream's and must stay byte-identical:
//! `lower_snake` (`function_not_found`), `SCREAMING_SNAKE` (`NOT_FOUND`, `STREAM_SET_ERROR`)
//! and, for update-op results only, dotted `op.subject.reason` (`merge.path.too_deep`). The
//! constant's name is the code upper-cased with `.` turned into `_` (a few carry a prefix
//! that says where the code appears, e.g. [`INFO_ROW_NOT_FOUND`]).
//!
//! Every constant states its [`Origin`] (upstream spelling or ours) and its [`Sender`] (sent by
//! this engine today, assigned to the engine by the protocol but not sent yet because the
//! feature is missing, or sent only by workers). [`catalogue`] lists them all with that data.
//!
//! | topic | module |
//! |---|---|
//! | routing and calls | [`invocation`] |
//! | registration of functions, workers and triggers | [`registration`] |
//! | the WebSocket handshake | [`handshake`] |
//! | `engine::*` discovery functions, shared lookup codes | [`discovery`] |
//! | the REST trigger server's error envelope | [`http`] |
//! | `state::*` | [`state`] |
//! | `stream::*` | [`stream`] |
//! | the stream socket (port 3112) | [`stream_socket`] |
//! | per-op errors inside `state::update` / `stream::update` results | [`update_op`] |
//! | pub/sub and queue functions | [`queue`] |
//! | `configuration::*` | [`configuration`] |
//! | HTTP-invoked functions | [`http_functions`] |
//! | the bridge to a remote engine | [`bridge`] |
//! | WebAssembly policies exposed as functions | [`policy`] |
//! | `worker::*` (managed workers' lifecycle) | [`managed_worker`] |
//! | codes only workers send | [`worker`] |

/// Where a code's exact spelling comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The same string upstream iii 0.23 puts on the wire (as PROTOCOL.md records it); SDKs
    /// and clients may match on it, so it must never change.
    Upstream,
    /// A code this engine introduced; upstream has no counterpart.
    Ours,
}

/// Who puts a code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// This engine sends it today.
    Engine,
    /// The protocol assigns it to the engine, but the feature that sends it is not built yet.
    NotYetSent,
    /// Only workers (the SDKs) send it; the engine forwards it and never originates it.
    Worker,
}

/// One entry of the catalogue: a constant of this module and what is known about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    /// The constant's name, e.g. `"FUNCTION_NOT_FOUND"`.
    pub name: &'static str,
    /// The code as it travels, e.g. `"function_not_found"`.
    pub code: &'static str,
    /// Whether the spelling is upstream's or ours.
    pub origin: Origin,
    /// Who sends it.
    pub sender: Sender,
    /// The submodule (topic) that defines it.
    pub topic: &'static str,
}

/// Every code of the catalogue, grouped by topic in the order of the module table above.
pub fn catalogue() -> impl Iterator<Item = &'static Code> {
    [
        invocation::TABLE_INVOCATION,
        registration::TABLE_REGISTRATION,
        handshake::TABLE_HANDSHAKE,
        discovery::TABLE_DISCOVERY,
        http::TABLE_HTTP,
        state::TABLE_STATE,
        stream::TABLE_STREAM,
        stream_socket::TABLE_STREAM_SOCKET,
        update_op::TABLE_UPDATE_OP,
        queue::TABLE_QUEUE,
        configuration::TABLE_CONFIGURATION,
        http_functions::TABLE_HTTP_FUNCTIONS,
        bridge::TABLE_BRIDGE,
        policy::TABLE_POLICY,
        managed_worker::TABLE_MANAGED_WORKER,
        worker::TABLE_WORKER,
    ]
    .into_iter()
    .flatten()
}

macro_rules! origin_doc {
    (Upstream) => {
        "*Origin:* upstream iii 0.23 (same string)."
    };
    (Ours) => {
        "*Origin:* ours (no upstream counterpart)."
    };
}

macro_rules! sender_doc {
    (Engine) => {
        "*Sent by:* this engine."
    };
    (NotYetSent) => {
        "*Sent by:* nothing yet; the protocol assigns it to the engine, the feature is missing."
    };
    (Worker) => {
        "*Sent by:* workers only; the engine forwards it and never originates it."
    };
}

/// Defines the constants of one topic and that topic's table for [`catalogue`], so the docs,
/// the constant and its catalogue entry can never disagree.
macro_rules! codes {
    ($table:ident, $topic:literal;
     $( $(#[doc = $doc:literal])+ $name:ident = $code:literal, $origin:ident, $sender:ident; )+) => {
        $(
            $(#[doc = $doc])+
            #[doc = ""]
            #[doc = origin_doc!($origin)]
            #[doc = sender_doc!($sender)]
            pub const $name: &str = $code;
        )+
        pub(crate) const $table: &[Code] = &[$(
            Code {
                name: stringify!($name),
                code: $code,
                origin: Origin::$origin,
                sender: Sender::$sender,
                topic: $topic,
            }
        ),+];
    };
}

pub use bridge::*;
pub use configuration::*;
pub use discovery::*;
pub use handshake::*;
pub use http::*;
pub use http_functions::*;
pub use invocation::*;
pub use managed_worker::*;
pub use policy::*;
pub use queue::*;
pub use registration::*;
pub use state::*;
pub use stream::*;
pub use stream_socket::*;
pub use update_op::*;
pub use worker::*;

pub mod invocation {
    //! Routing and calling functions (PROTOCOL.md §3): the codes an `invocationresult` error
    //! carries when the engine, not the target's handler, fails the call.
    use super::{Code, Origin, Sender};

    codes! { TABLE_INVOCATION, "invocation";
        /// No function `(namespace, function_id)` is registered: the engine's resolution of a
        /// worker's `invokefunction` and of engine-internal calls (`Engine::call`, trigger fires,
        /// HTTP routes). The message names the namespace and, for worker calls, the other
        /// namespaces the id lives in (§3.1). SDKs also send it when they lack a handler.
        FUNCTION_NOT_FOUND = "function_not_found", Upstream, Engine;
        /// A party of the call disconnected before the result arrived: every in-flight call of
        /// a departing connection is resolved with it (disconnect cleanup, §3.6), and an
        /// engine-internal call whose waiter is dropped gets it too. Message "Invocation stopped".
        INVOCATION_STOPPED = "invocation_stopped", Upstream, Engine;
        /// Internal failure of the call plumbing: a worker reused an `invocation_id` that is
        /// still in flight, or a generated id collided, when the pending call is recorded.
        INVOCATION_ERROR = "invocation_error", Upstream, Engine;
        /// The caller or the callee already has `max_pending_calls` calls in flight on its
        /// connection (README "Limits"); the call is refused instead of queued.
        TOO_MANY_PENDING_CALLS = "too_many_pending_calls", Ours, Engine;
        /// A call or result whose frame would exceed the receiving peer's inbound message limit
        /// (`max_message_bytes`, the SDKs' 64 MiB): the sender is answered instead.
        FRAME_TOO_LARGE = "frame_too_large", Ours, Engine;
        /// The target worker's connection closed while the engine was forwarding the
        /// `invokefunction` to it (both worker-routed and engine-internal calls).
        CHANNEL_SEND_FAILED = "channel_send_failed", Upstream, Engine;
        /// A builtin's input did not deserialize ("Failed to deserialize input for `<id>`: …",
        /// §3.9), a call's `data` was not JSON, or a malformed `invokefunction` frame still had a
        /// usable `invocation_id` (the session answers it instead of letting the caller time out).
        DESERIALIZATION_ERROR = "deserialization_error", Upstream, Engine;
        /// A builtin could not serialize its output (`state::update`'s result).
        SERIALIZATION_ERROR = "serialization_error", Upstream, Engine;
        /// A blank (empty or whitespace) namespace: `invokefunction.namespace`, the `namespace`
        /// or `trigger_namespace` of a `registertrigger` (as a `triggerregistrationresult`
        /// error), `engine::register_trigger`'s `trigger_namespace`, and the namespace declared
        /// to `engine::workers::register` (§3.8).
        INVALID_NAMESPACE = "INVALID_NAMESPACE", Upstream, Engine;
        /// RBAC denial (§9.4): a call, a trigger target, a namespace declaration, or
        /// `engine::register_trigger` / `engine::functions::info` on a listener whose session
        /// does not allow it.
        FORBIDDEN = "FORBIDDEN", Upstream, Engine;
        /// An `invokefunction` with `action: enqueue` failed: no function
        /// `engine::queue::enqueue` is registered, or the provider returned an error (its
        /// message is carried over) (§3.4).
        ENQUEUE_ERROR = "enqueue_error", Upstream, Engine;
        /// Opt-in payload validation (a worker-socket listener with `validate: enforce`,
        /// §3.9): a call's `data` does not match the target's `request_format`, or (as a
        /// `triggerregistrationresult` error, or the error of `engine::register_trigger`) a
        /// binding's `config` does not match its trigger type's `trigger_request_format`. The
        /// message names the function or trigger type, the validator's message and the JSON
        /// pointer of the failing value; `details` carries `instance_path` and `schema_path`.
        VALIDATION_ERROR = "validation_error", Ours, Engine;
    }
}

pub mod registration {
    //! Registering functions, worker names and trigger bindings (PROTOCOL.md §2.3, §4): the
    //! `code` of `registrationrejected` frames and of `triggerregistrationresult` errors.
    use super::{Code, Origin, Sender};

    codes! { TABLE_REGISTRATION, "registration";
        /// `registrationrejected` when a connection's registrations (or those it buffered
        /// before `engine::workers::register`) exceed their count or byte limit.
        REGISTRATION_LIMIT_EXCEEDED = "registration_limit_exceeded", Ours, Engine;
        /// `registrationrejected` for one `registerfunction`: another live connection owns the
        /// id in this namespace, the id is an engine builtin, or an `engine::*` id is registered
        /// outside `default` (then `owner_worker_id` is empty). Built by
        /// [`out::function_conflict`](crate::out::function_conflict).
        FUNCTION_NAMESPACE_CONFLICT = "FUNCTION_NAMESPACE_CONFLICT", Upstream, Engine;
        /// `registrationrejected` from `engine::workers::register`: another live connection holds
        /// the worker name in this namespace; the engine then closes the new connection. Built by
        /// [`out::worker_conflict`](crate::out::worker_conflict).
        WORKER_NAMESPACE_CONFLICT = "WORKER_NAMESPACE_CONFLICT", Upstream, Engine;
        /// An engine-provided trigger type refused a binding (bad cron expression, missing
        /// `api_path`, conflicting HTTP route …): the error of `engine::register_trigger`, the
        /// `triggerregistrationresult` sent to the binding's owner when arming fails (also after
        /// a re-home), and a worker provider's rejection returned by `engine::register_trigger`.
        /// SDK providers use it too.
        TRIGGER_REGISTRATION_FAILED = "trigger_registration_failed", Upstream, Engine;
        /// `engine::unregister_trigger` when the provider fails to remove the binding. This
        /// engine's unregister cannot fail, so nothing sends it yet.
        UNREGISTER_FAILED = "unregister_failed", Upstream, NotYetSent;
    }
}

pub mod handshake {
    //! The WebSocket handshake (PROTOCOL.md §1.2): the `{"type":"error"}` frame.
    use super::{Code, Origin, Sender};

    codes! { TABLE_HANDSHAKE, "handshake";
        /// The only `{"type":"error","error":{…}}` frame: the listener's RBAC auth function
        /// failed, returned `null` or an unusable result; the engine closes the socket next
        /// (§1.2, §9.2); also when it does not answer within the listener's handshake timeout.
        AUTH_ERROR = "AUTH_ERROR", Upstream, Engine;
    }
}

pub mod discovery {
    //! The `engine::*` discovery functions (PROTOCOL.md §5.1) and the lookup codes other
    //! services share with them.
    use super::{Code, Origin, Sender};

    codes! { TABLE_DISCOVERY, "discovery";
        /// Something looked up by name does not exist: `engine::workers::info`,
        /// `engine::functions::info` (single id), `engine::triggers::info`,
        /// `engine::registered-triggers::info`; `configuration::get`; and the REST trigger
        /// server's envelope for an unknown route (404).
        NOT_FOUND = "NOT_FOUND", Upstream, Engine;
        /// Input that deserialized but makes no sense: `engine::functions::info` with neither or
        /// both of `function_id`/`function_ids`, or more than 32 ids; `engine::workers::register`
        /// called by something that is not a connected worker.
        INVALID_ARGUMENTS = "INVALID_ARGUMENTS", Upstream, Engine;
        /// The `error` string of one row of an `engine::functions::info` batch answer whose id
        /// does not resolve (the batch itself succeeds).
        INFO_ROW_NOT_FOUND = "not_found", Upstream, Engine;
        /// The `error` string of one row of an `engine::functions::info` batch answer that RBAC
        /// hides.
        INFO_ROW_FORBIDDEN = "forbidden", Upstream, Engine;
    }
}

pub mod http {
    //! The REST trigger server's error envelope `{"error":{"code","message"}}` (PROTOCOL.md
    //! §4.6.1). A handler's own error is passed through with the handler's code; an unknown
    //! route uses [`NOT_FOUND`](super::NOT_FOUND).
    use super::{Code, Origin, Sender};

    codes! { TABLE_HTTP, "http";
        /// A route's condition function returned `false`: status 422 with `"skipped": true`.
        CONDITION_NOT_MET = "CONDITION_NOT_MET", Upstream, Engine;
        /// A middleware call did not answer within the http config's `middleware_timeout_ms`:
        /// status 504 (a handler's own timeout is a 504 with an empty body, no code).
        MIDDLEWARE_TIMEOUT = "MIDDLEWARE_TIMEOUT", Upstream, Engine;
        /// The server itself failed: shutting down (503), an unreadable request body (400), a
        /// handler response that cannot be turned into HTTP (500).
        INTERNAL_ERROR = "INTERNAL_ERROR", Upstream, Engine;
    }
}

pub mod state {
    //! `state::*` (PROTOCOL.md §5.3). Adapter failures are reported with the operation's code
    //! and the adapter's message.
    use super::{Code, Origin, Sender};

    codes! { TABLE_STATE, "state";
        /// `state::set`: the value's JSON is longer than the service's `max_value_bytes`.
        VALUE_TOO_LARGE = "VALUE_TOO_LARGE", Upstream, Engine;
        /// `state::set`: the adapter failed to store the value.
        SET_ERROR = "SET_ERROR", Upstream, Engine;
        /// `state::get`, and the read of the old value in `state::delete`: the adapter failed.
        GET_ERROR = "GET_ERROR", Upstream, Engine;
        /// `state::delete`: the adapter failed to remove the value.
        DELETE_ERROR = "DELETE_ERROR", Upstream, Engine;
        /// `state::update`: the `ops` did not parse, or the adapter failed.
        UPDATE_ERROR = "UPDATE_ERROR", Upstream, Engine;
        /// `state::list`: the adapter failed.
        LIST_ERROR = "LIST_ERROR", Upstream, Engine;
        /// `state::list_groups`: the adapter failed.
        LIST_GROUPS_ERROR = "LIST_GROUPS_ERROR", Upstream, Engine;
    }
}

pub mod stream {
    //! `stream::*` (PROTOCOL.md §5.4). Adapter failures and failures of a custom stream
    //! provider are reported with the operation's code and the underlying message.
    use super::{Code, Origin, Sender};

    codes! { TABLE_STREAM, "stream";
        /// `stream::set`: storing the item failed.
        STREAM_SET_ERROR = "STREAM_SET_ERROR", Upstream, Engine;
        /// `stream::get`: reading the item failed.
        STREAM_GET_ERROR = "STREAM_GET_ERROR", Upstream, Engine;
        /// `stream::delete`: removing the item failed.
        STREAM_DELETE_ERROR = "STREAM_DELETE_ERROR", Upstream, Engine;
        /// `stream::list`: reading the group's items failed.
        STREAM_GET_GROUP_ERROR = "STREAM_GET_GROUP_ERROR", Upstream, Engine;
        /// `stream::list_groups`: listing the stream's groups failed.
        STREAM_LIST_GROUPS_ERROR = "STREAM_LIST_GROUPS_ERROR", Upstream, Engine;
        /// `stream::list_all`: listing streams and groups failed.
        STREAM_LIST_ALL_ERROR = "STREAM_LIST_ALL_ERROR", Upstream, Engine;
        /// `stream::send`: emitting the event failed. This engine's emit cannot fail, so
        /// nothing sends it yet.
        STREAM_SEND_ERROR = "STREAM_SEND_ERROR", Upstream, NotYetSent;
        /// `stream::update`: the `ops` did not parse, or applying them failed.
        STREAM_UPDATE_ERROR = "STREAM_UPDATE_ERROR", Upstream, Engine;
        /// `stream::update`: the result could not be serialized (upstream's stream service uses
        /// this where the state service uses `serialization_error`).
        JSON_ERROR = "JSON_ERROR", Upstream, Engine;
    }
}

pub mod stream_socket {
    //! The stream socket on port 3112 (PROTOCOL.md §4.6.4): the JSON body of a refused
    //! upgrade, and the `{"type":"error"}` frames a subscriber gets for a frame it sent.
    use super::{Code, Origin, Sender};

    codes! { TABLE_STREAM_SOCKET, "stream socket";
        /// Upgrade refused with 401: the `auth_function` returned an error, or a result that is
        /// not an object with a `context` key (upstream accepts the connection anyway).
        STREAM_AUTH_FAILED = "stream_auth_failed", Ours, Engine;
        /// Upgrade refused with 503: the `auth_function` is not registered, or did not answer
        /// in time.
        STREAM_AUTH_UNAVAILABLE = "stream_auth_unavailable", Ours, Engine;
        /// A request to the stream socket that is not a WebSocket upgrade: status 426.
        WEBSOCKET_UPGRADE_REQUIRED = "websocket_upgrade_required", Ours, Engine;
        /// A client frame that is not a `join`/`leave` frame with the required fields; the
        /// connection stays open.
        INVALID_STREAM_FRAME = "invalid_stream_frame", Ours, Engine;
        /// A `join` with a `subscriptionId` this connection already has open.
        SUBSCRIPTION_EXISTS = "subscription_exists", Ours, Engine;
        /// A `join` past the socket's `max_subscriptions` per connection.
        SUBSCRIPTION_LIMIT_EXCEEDED = "subscription_limit_exceeded", Ours, Engine;
        /// Connection refused with 503: the socket already holds `max_connections` sockets.
        STREAM_CONNECTION_LIMIT = "stream_connection_limit", Ours, Engine;
    }
}

pub mod update_op {
    //! Per-op errors inside a *successful* `state::update` / `stream::update` result:
    //! `"errors":[{"op_index","code","message","doc_url"?}]` (PROTOCOL.md §8.3). A failing op is
    //! skipped and the others still apply. The codes are `op.subject.reason` with `op` one of
    //! `set`, `merge`, `increment`, `decrement`, `append`, `remove`.
    //!
    //! They are produced by `iii-update-ops` (`plugins/update-ops`), which the kv plugin and the
    //! in-memory test stores link. Path checks run for every op; a field op (`set`,
    //! `increment`, `decrement`, `remove`) has at most one segment, so it can only fail the
    //! length and pollution checks. Protocol.md names the `merge.path.*` and `merge.value.*`
    //! families and spells `set.target_not_object`, `increment.not_number` and
    //! `append.type_mismatch`; the rest follow the same scheme and are ours.
    use super::{Code, Origin, Sender};

    codes! { TABLE_UPDATE_OP, "update_op";
        /// `merge`: the path has more than 32 segments.
        MERGE_PATH_TOO_DEEP = "merge.path.too_deep", Upstream, Engine;
        /// `merge`: a path segment is empty.
        MERGE_PATH_EMPTY_SEGMENT = "merge.path.empty_segment", Upstream, Engine;
        /// `merge`: a path segment is longer than 256 bytes.
        MERGE_PATH_SEGMENT_TOO_LONG = "merge.path.segment_too_long", Upstream, Engine;
        /// `merge`: a path segment is `__proto__`, `constructor` or `prototype`.
        MERGE_PATH_PROTO_POLLUTED = "merge.path.proto_polluted", Upstream, Engine;
        /// `merge`: the value is not an object.
        MERGE_VALUE_NOT_AN_OBJECT = "merge.value.not_an_object", Upstream, Engine;
        /// `merge`: the value has more than 1024 top-level keys.
        MERGE_VALUE_TOO_MANY_KEYS = "merge.value.too_many_keys", Upstream, Engine;
        /// `merge`: the value nests deeper than 16 levels.
        MERGE_VALUE_TOO_DEEP = "merge.value.too_deep", Upstream, Engine;
        /// `merge`: the value contains a `__proto__`, `constructor` or `prototype` key.
        MERGE_VALUE_PROTO_POLLUTED = "merge.value.proto_polluted", Upstream, Engine;
        /// `append`: the path has more than 32 segments.
        APPEND_PATH_TOO_DEEP = "append.path.too_deep", Ours, Engine;
        /// `append`: a path segment is empty.
        APPEND_PATH_EMPTY_SEGMENT = "append.path.empty_segment", Ours, Engine;
        /// `append`: a path segment is longer than 256 bytes.
        APPEND_PATH_SEGMENT_TOO_LONG = "append.path.segment_too_long", Ours, Engine;
        /// `append`: a path segment is `__proto__`, `constructor` or `prototype`.
        APPEND_PATH_PROTO_POLLUTED = "append.path.proto_polluted", Ours, Engine;
        /// `append`: the target is neither an array, a string (with a string value), null nor
        /// missing.
        APPEND_TYPE_MISMATCH = "append.type_mismatch", Upstream, Engine;
        /// `append` with a path: the root value is not an object.
        APPEND_TARGET_NOT_OBJECT = "append.target_not_object", Ours, Engine;
        /// `set`: the field name is longer than 256 bytes.
        SET_PATH_SEGMENT_TOO_LONG = "set.path.segment_too_long", Ours, Engine;
        /// `set`: the field name is `__proto__`, `constructor` or `prototype`.
        SET_PATH_PROTO_POLLUTED = "set.path.proto_polluted", Ours, Engine;
        /// `set` with a field: the root value is not an object.
        SET_TARGET_NOT_OBJECT = "set.target_not_object", Upstream, Engine;
        /// `increment`: the field name is longer than 256 bytes.
        INCREMENT_PATH_SEGMENT_TOO_LONG = "increment.path.segment_too_long", Ours, Engine;
        /// `increment`: the field name is `__proto__`, `constructor` or `prototype`.
        INCREMENT_PATH_PROTO_POLLUTED = "increment.path.proto_polluted", Ours, Engine;
        /// `increment`: the target is not a number.
        INCREMENT_NOT_NUMBER = "increment.not_number", Upstream, Engine;
        /// `increment` with a field: the root value is not an object.
        INCREMENT_TARGET_NOT_OBJECT = "increment.target_not_object", Ours, Engine;
        /// `decrement`: the field name is longer than 256 bytes.
        DECREMENT_PATH_SEGMENT_TOO_LONG = "decrement.path.segment_too_long", Ours, Engine;
        /// `decrement`: the field name is `__proto__`, `constructor` or `prototype`.
        DECREMENT_PATH_PROTO_POLLUTED = "decrement.path.proto_polluted", Ours, Engine;
        /// `decrement`: the target is not a number.
        DECREMENT_NOT_NUMBER = "decrement.not_number", Ours, Engine;
        /// `decrement` with a field: the root value is not an object.
        DECREMENT_TARGET_NOT_OBJECT = "decrement.target_not_object", Ours, Engine;
        /// `remove`: the field name is longer than 256 bytes.
        REMOVE_PATH_SEGMENT_TOO_LONG = "remove.path.segment_too_long", Ours, Engine;
        /// `remove`: the field name is `__proto__`, `constructor` or `prototype`.
        REMOVE_PATH_PROTO_POLLUTED = "remove.path.proto_polluted", Ours, Engine;
        /// `remove` with a field: the root value is not an object.
        REMOVE_TARGET_NOT_OBJECT = "remove.target_not_object", Ours, Engine;
    }
}

pub mod queue {
    //! Pub/sub and queue functions (PROTOCOL.md §5.5, §8.4): `publish`, `iii::durable::publish`,
    //! `iii::queue::*` and `engine::queue::*`. `publish` is served by the pubsub service.
    use super::{Code, Origin, Sender};

    codes! { TABLE_QUEUE, "queue";
        /// `publish` / `iii::durable::publish` without a `topic`.
        TOPIC_NOT_SET = "topic_not_set", Upstream, Engine;
        /// `publish`: the pub/sub adapter refused or failed to carry the message.
        PUBLISH_FAILED = "publish_failed", Ours, Engine;
        /// `iii::queue::redrive*` / `iii::queue::discard_message` without a `queue`.
        QUEUE_NOT_SET = "queue_not_set", Upstream, Engine;
        /// `iii::queue::redrive_message` / `iii::queue::discard_message` without a `message_id`.
        MESSAGE_ID_NOT_SET = "message_id_not_set", Upstream, Engine;
        /// `iii::queue::redrive`: moving the dead letters back failed.
        REDRIVE_FAILED = "redrive_failed", Upstream, Engine;
        /// `iii::queue::redrive_message`: moving the one dead letter back failed.
        REDRIVE_MESSAGE_FAILED = "redrive_message_failed", Upstream, Engine;
        /// `iii::queue::discard_message`: dropping the dead letter failed.
        DISCARD_MESSAGE_FAILED = "discard_message_failed", Upstream, Engine;
        /// `engine::queue::list_topics`: the adapter failed.
        LIST_TOPICS_FAILED = "list_topics_failed", Upstream, Engine;
        /// `engine::queue::topic_stats` / `engine::queue::dlq_messages` without a `topic`.
        TOPIC_REQUIRED = "topic_required", Upstream, Engine;
        /// `engine::queue::topic_stats`: the adapter failed.
        TOPIC_STATS_FAILED = "topic_stats_failed", Upstream, Engine;
        /// `engine::queue::dlq_topics`: the adapter failed.
        DLQ_TOPICS_FAILED = "dlq_topics_failed", Upstream, Engine;
        /// `engine::queue::dlq_messages`: the adapter failed.
        DLQ_MESSAGES_FAILED = "dlq_messages_failed", Upstream, Engine;
    }
}

pub mod configuration {
    //! `configuration::*` (PROTOCOL.md §5.5, §7.5). A missing entry uses
    //! [`NOT_FOUND`](super::NOT_FOUND).
    use super::{Code, Origin, Sender};

    codes! { TABLE_CONFIGURATION, "configuration";
        /// `configuration::set` for an id nobody registered.
        NOT_REGISTERED = "NOT_REGISTERED", Upstream, Engine;
        /// `configuration::set` with an id that is not a valid entry id.
        INVALID_ID = "INVALID_ID", Upstream, Engine;
        /// `configuration::set` / `configuration::get`: the value does not satisfy the entry's
        /// schema.
        SCHEMA_INVALID = "SCHEMA_INVALID", Upstream, Engine;
        /// `configuration::set`: the entry's schema cannot be compiled or loaded.
        SCHEMA_UNAVAILABLE = "SCHEMA_UNAVAILABLE", Upstream, Engine;
        /// `configuration::set`: the configuration adapter failed to store the value.
        ADAPTER_ERROR = "ADAPTER_ERROR", Upstream, Engine;
        /// `configuration::get`: a `${VAR}` placeholder could not be expanded.
        EXPAND_FAILED = "EXPAND_FAILED", Upstream, Engine;
        /// `configuration::set` for a builtin service's id: the value is valid but the service
        /// could not take it (e.g. its new port is taken); the running service is unchanged.
        APPLY_FAILED = "APPLY_FAILED", Ours, Engine;
    }
}

pub mod http_functions {
    //! HTTP-invoked functions, `registerfunction.invocation` (PROTOCOL.md §3.10): the `error` of
    //! the `registrationrejected` a refused registration gets, and the errors of their calls.
    use super::{Code, Origin, Sender};

    codes! { TABLE_HTTP_FUNCTIONS, "http_functions";
        /// The function's URL failed the security policy (allowlist, https, private address),
        /// at registration or, for an address its host resolves to, at a call.
        URL_VALIDATION_FAILED = "url_validation_failed", Upstream, Engine;
        /// The outbound request failed in transport (connect, TLS, reset).
        HTTP_REQUEST_FAILED = "http_request_failed", Upstream, Engine;
        /// The outbound request got no complete response within the function's `timeout_ms`.
        HTTP_REQUEST_TIMEOUT = "http_request_timeout", Ours, Engine;
        /// The response body could not be read (or exceeds the size the engine accepts).
        HTTP_RESPONSE_FAILED = "http_response_failed", Upstream, Engine;
        /// A 2xx response whose non-empty body is not JSON.
        INVALID_RESPONSE = "invalid_response", Upstream, Engine;
        /// A status of 400 or more whose body has no `{"error":{code,message}}`; the message is
        /// the status line.
        HTTP_ERROR = "http_error", Upstream, Engine;
        /// An environment variable the function's `auth` names is unset.
        MISSING_ENV_VAR = "missing_env_var", Upstream, Engine;
        /// `auth.type = hmac`: the secret's variable is set but empty (or not UTF-8).
        SECRET_NOT_FOUND = "secret_not_found", Upstream, Engine;
        /// `auth.type = bearer`: the token's variable is set but empty (or not UTF-8).
        TOKEN_NOT_FOUND = "token_not_found", Upstream, Engine;
        /// `auth.type = api_key`: the key's variable is set but empty (or not UTF-8).
        API_KEY_NOT_FOUND = "api_key_not_found", Upstream, Engine;
        /// The `invocation` object is malformed: unknown method, bad header, missing `url`,
        /// unknown `auth.type`, a `timeout_ms` out of range.
        INVALID_INVOCATION = "invalid_invocation", Ours, Engine;
        /// A worker registered an HTTP-invoked function and the engine does not run the
        /// `iii-http-functions` service; the message says which config entry to add.
        HTTP_FUNCTIONS_UNAVAILABLE = "http_functions_unavailable", Ours, Engine;
    }
}

pub mod bridge {
    //! The bridge to a remote engine, `bridge.invoke` (PROTOCOL.md §5.5).
    use super::{Code, Origin, Sender};

    codes! { TABLE_BRIDGE, "bridge";
        /// The remote call failed, timed out, or the remote engine is not connected; a remote
        /// error's own body is in `details`.
        BRIDGE_ERROR = "bridge_error", Upstream, Engine;
    }
}

pub mod policy {
    //! WebAssembly policies exposed as in-process functions (the `policies` service): what a
    //! policy function answers when its policy denies or cannot decide.
    use super::{Code, Origin, Sender};

    codes! { TABLE_POLICY, "policy";
        /// The policy denied a connection (authenticate); the message is the policy's reason.
        POLICY_DENIED = "policy_denied", Ours, Engine;
        /// The policy could not decide: it trapped, ran past its deadline or memory cap,
        /// returned an invalid decision, or does not implement the hook the input asks for.
        /// The caller must deny (fail closed).
        POLICY_FAILED = "policy_failed", Ours, Engine;
    }
}

pub mod managed_worker {
    //! `worker::status`, `worker::stop`, `worker::start`, `worker::restart` (the managed
    //! workers service). Spelled like the W-codes `iii worker` prints (`error: [W110] …`), so
    //! the CLI shows the engine's code as is.
    use super::{Code, Origin, Sender};

    codes! { TABLE_MANAGED_WORKER, "managed_worker";
        /// The name is not an `image:` or `worker_path:` entry of the running config file.
        NOT_MANAGED_W110 = "W110", Ours, Engine;
        /// A stop did not finish within its budget (the worker host is still stopping).
        STOP_TIMEOUT_W162 = "W162", Ours, Engine;
    }
}

pub mod worker {
    //! Codes that only workers (the SDKs) produce. The engine forwards them inside results and
    //! must never originate them; they are listed so no engine code reuses their strings and
    //! tests can name them.
    use super::{Code, Origin, Sender};

    codes! { TABLE_WORKER, "worker";
        /// A handler raised; the message and `stacktrace` are the handler's.
        INVOCATION_FAILED = "invocation_failed", Upstream, Worker;
        /// A worker was asked to run a function it registered as HTTP-invoked.
        FUNCTION_NOT_INVOKABLE = "function_not_invokable", Upstream, Worker;
        /// A provider (Node SDK) got a `registertrigger` for a type it does not provide.
        TRIGGER_TYPE_NOT_FOUND = "trigger_type_not_found", Upstream, Worker;
        /// SDK-local: no result within the client's invocation timeout. The REST server also
        /// answers 408 with it when a request body arrives slower than `body_read_timeout_ms`.
        TIMEOUT = "TIMEOUT", Upstream, Engine;
        /// SDK-local: the client is shutting down.
        SHUTDOWN = "SHUTDOWN", Upstream, Worker;
        /// SDK-local (Python): a message over 64 MiB is refused before sending. The REST server
        /// also answers 413 with it for a body over `body_limit_bytes`.
        PAYLOAD_TOO_LARGE = "payload_too_large", Upstream, Engine;
        /// SDK-local: an error without a code.
        UNKNOWN = "UNKNOWN", Upstream, Worker;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn is_screaming_snake(s: &str) -> bool {
        !s.is_empty()
            && s.split('_').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            })
    }

    fn is_lower_snake(s: &str) -> bool {
        !s.is_empty()
            && s.split('_').all(|w| {
                !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            })
    }

    const OPS: [&str; 6] = ["set", "merge", "increment", "decrement", "append", "remove"];

    /// `op.reason` or `op.subject.reason`, each part lower_snake, `op` an update op.
    fn is_update_op_code(s: &str) -> bool {
        let parts: Vec<&str> = s.split('.').collect();
        (2..=3).contains(&parts.len())
            && OPS.contains(&parts[0])
            && parts.iter().all(|p| is_lower_snake(p))
    }

    #[test]
    fn no_two_constants_share_a_string_or_a_name() {
        let mut by_code: HashMap<&str, &str> = HashMap::new();
        let mut names: HashMap<&str, &str> = HashMap::new();
        for c in catalogue() {
            if let Some(other) = by_code.insert(c.code, c.name) {
                panic!("{} and {other} both spell {:?}", c.name, c.code);
            }
            if let Some(topic) = names.insert(c.name, c.topic) {
                panic!("{} is defined in both {topic} and {}", c.name, c.topic);
            }
        }
        assert!(by_code.len() > 80, "catalogue looks truncated");
    }

    #[test]
    fn every_code_follows_the_spec_conventions() {
        for c in catalogue() {
            if c.topic == "update_op" {
                assert!(is_update_op_code(c.code), "{}: {:?}", c.name, c.code);
            } else {
                assert!(
                    is_lower_snake(c.code) || is_screaming_snake(c.code),
                    "{} = {:?} is neither lower_snake nor SCREAMING_SNAKE",
                    c.name,
                    c.code
                );
            }
            // The name is the code, upper-cased, optionally after a prefix saying where it is used.
            let derived = c.code.to_ascii_uppercase().replace('.', "_");
            assert!(
                c.name == derived || c.name.ends_with(&format!("_{derived}")),
                "{} should be named {derived}",
                c.name
            );
            assert!(is_screaming_snake(c.name), "{}", c.name);
        }
    }

    #[test]
    fn catalogue_agrees_with_the_constants() {
        let find = |name: &str| catalogue().find(|c| c.name == name).unwrap();
        assert_eq!(find("FUNCTION_NOT_FOUND").code, FUNCTION_NOT_FOUND);
        assert_eq!(find("FORBIDDEN").sender, Sender::Engine);
        assert_eq!(find("UNREGISTER_FAILED").sender, Sender::NotYetSent);
        assert_eq!(find("DECREMENT_NOT_NUMBER").origin, Origin::Ours);
        assert_eq!(find("INVOCATION_FAILED").sender, Sender::Worker);
        assert_eq!(find("JSON_ERROR").topic, "stream");
    }

    #[test]
    fn every_code_is_documented_in_protocol_md() {
        let doc = include_str!("../PROTOCOL.md");
        let appendix = doc
            .split("\n## Appendix A")
            .nth(1)
            .expect("PROTOCOL.md has an Appendix A")
            .split("\n## ")
            .next()
            .unwrap_or_default();
        // First column of every table row: the codes of that row, in backticks.
        let mut listed: Vec<&str> = Vec::new();
        for row in appendix.lines().filter(|l| l.starts_with('|')) {
            let first = row.split('|').nth(1).unwrap_or_default();
            listed.extend(first.split('`').skip(1).step_by(2));
        }
        for c in catalogue() {
            assert!(
                listed.contains(&c.code),
                "{} ({:?}) is missing from PROTOCOL.md Appendix A",
                c.name,
                c.code
            );
        }
        for l in &listed {
            assert!(
                catalogue().any(|c| c.code == *l),
                "PROTOCOL.md Appendix A lists {l:?}, which is not in the catalogue"
            );
        }
    }
}
