//! The adapter traits iii services consume, defined on the consumer side.
//!
//! Services (`state::*`, `stream::*`, queue, pubsub, lock, and policies) call plugins through
//! these traits and never know how the adapter runs. The plugin host implements them over
//! WebAssembly components; [`memory`] implements them in process, for unit tests of services
//! that need no wasmtime. This is rust-vmm's rule: the consumer owns the trait, the provider
//! implements it, so the core and the services compile without the provider.

#![deny(missing_docs)]

pub mod lock;
pub mod memory;
pub mod policy;
pub mod pubsub;
pub mod queue;
mod spec;

pub use lock::{LocalLocks, LockStore, LockWorld};
pub use policy::{Policy, PolicyWorld};
pub use pubsub::{BusMessage, LocalBus, PubSubBus, PubSubWorld};
pub use queue::{QueueStore, QueueWorld, TopicRouter};
pub use spec::{
    AdapterSource, AdapterSpec, Grants, SpecError, DEFAULT_DEADLINE_MS, DEFAULT_MEMORY_MB,
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What kind of failure an adapter call ended in. Services map it to a wire error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterErrorKind {
    /// The request was refused as invalid (a value too large, a bad key); retrying will not help.
    InvalidInput,
    /// The adapter's backend failed (disk, network).
    Backend,
    /// The adapter instance was lost (trap, deadline, memory cap) and restarted, or given up.
    Unavailable,
    /// The plugin does not implement the operation (a policy hook it has no export for).
    Unsupported,
    /// Anything else the adapter reported.
    Other,
}

impl std::fmt::Display for AdapterErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AdapterErrorKind::InvalidInput => "invalid input",
            AdapterErrorKind::Backend => "a backend failure",
            AdapterErrorKind::Unavailable => "an unavailable adapter",
            AdapterErrorKind::Unsupported => "an unsupported operation",
            AdapterErrorKind::Other => "an error",
        })
    }
}

/// A failed adapter call: its kind and a message that names the adapter and, where there is
/// one, the config knob to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdapterError {
    /// What kind of failure this is.
    pub kind: AdapterErrorKind,
    /// The readable message, shown to callers as is.
    pub message: String,
}

impl AdapterError {
    /// An error of `kind` with `message`.
    pub fn new(kind: AdapterErrorKind, message: impl Into<String>) -> Self {
        AdapterError {
            kind,
            message: message.into(),
        }
    }

    /// True when the adapter instance was lost and restarted (or given up).
    pub fn is_instance_failure(&self) -> bool {
        self.kind == AdapterErrorKind::Unavailable
    }
}

/// Result of `set`: the replaced value and the stored one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    /// The value before the call; `None` when the key was absent.
    pub old_value: Option<Value>,
    /// The value now stored.
    pub new_value: Value,
}

/// One failed op of an `update` (`errors[]` of the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOpError {
    /// Index of the op in the request's `ops`.
    pub op_index: usize,
    /// Stable error code, e.g. `TYPE_MISMATCH`.
    pub code: String,
    /// Readable explanation.
    pub message: String,
    /// Where the code is documented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_url: Option<String>,
}

/// Result of `update`; serialises as `{"old_value","new_value","errors"?}` (`errors` omitted
/// when empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateResult {
    /// The value before the update; `None` when the key was absent.
    pub old_value: Option<Value>,
    /// The value after every op that applied.
    pub new_value: Value,
    /// The ops that failed and were skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<UpdateOpError>,
}

/// `path` of merge/append: one literal key or a list of literal keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SegmentPath {
    /// One key (`""` is the root).
    One(String),
    /// A list of literal keys, outermost first.
    Many(Vec<String>),
}

impl SegmentPath {
    /// Segments; a single empty string is the root, like an absent path.
    pub fn segments(&self) -> Vec<String> {
        match self {
            SegmentPath::One(s) if s.is_empty() => Vec::new(),
            SegmentPath::One(s) => vec![s.clone()],
            SegmentPath::Many(v) => v.clone(),
        }
    }
}

/// An update operation as SDKs send it (PROTOCOL.md §8.3), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UpdateOp {
    /// Set one top-level field.
    Set {
        /// The field; `""` replaces the whole value.
        path: String,
        /// A missing value sets `null`.
        #[serde(default)]
        value: Value,
    },
    /// Deep-merge an object at a path.
    Merge {
        /// Where to merge; absent is the root.
        #[serde(default)]
        path: Option<SegmentPath>,
        /// The object to merge in.
        value: Value,
    },
    /// Add to a numeric field.
    Increment {
        /// The field.
        path: String,
        /// The amount.
        by: i64,
    },
    /// Subtract from a numeric field.
    Decrement {
        /// The field.
        path: String,
        /// The amount.
        by: i64,
    },
    /// Append to an array (or a string) at a path.
    Append {
        /// Where to append; absent is the root.
        #[serde(default)]
        path: Option<SegmentPath>,
        /// The element to append.
        value: Value,
    },
    /// Remove one top-level field.
    Remove {
        /// The field.
        path: String,
    },
}

impl UpdateOp {
    /// Parses the `ops` array of a `state::update` / `stream::update` call.
    pub fn parse_list(ops: &Value) -> Result<Vec<UpdateOp>, serde_json::Error> {
        serde_json::from_value(ops.clone())
    }
}

/// One stream with its groups, from `list_all`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamGroups {
    /// The stream name.
    pub id: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// A state adapter (PROTOCOL.md §8.1): values by scope and key. Calls on one adapter are
/// serialised by the provider.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// The value at `scope`/`key`, if any.
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError>;
    /// Stores `value`, returning the old and new values.
    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, AdapterError>;
    /// Returns the removed value; `None` (and no effect) when absent.
    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, AdapterError>;
    /// Applies `ops` in order (a missing value starts as `{}`).
    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError>;
    /// Every value in `scope`.
    async fn list(&self, scope: &str) -> Result<Vec<Value>, AdapterError>;
    /// Every scope that holds a value.
    async fn list_groups(&self) -> Result<Vec<String>, AdapterError>;
}

/// A stream adapter's storage (PROTOCOL.md §8.2): items by stream, group and id. Fan-out to
/// subscribers stays in the stream service.
#[async_trait]
pub trait StreamStore: Send + Sync {
    /// The item, if any.
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError>;
    /// Stores an item, returning the old and new values.
    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, AdapterError>;
    /// Returns the removed item; `None` (and no effect) when absent.
    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, AdapterError>;
    /// Applies `ops` to an item in order.
    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, AdapterError>;
    /// Every item of a group.
    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, AdapterError>;
    /// The groups of a stream.
    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, AdapterError>;
    /// Every stream with its groups.
    async fn list_all(&self) -> Result<Vec<StreamGroups>, AdapterError>;
}

/// An adapter world: a WIT package@version whose components provide one kind of store. A new
/// family (queue, pubsub, lock) adds a marker type here and a module in the plugin host; the
/// loader trait does not change.
pub trait AdapterWorld: 'static {
    /// The world's WIT name, e.g. `iii:adapter/state-adapter@0.1.0`; also how a loader picks
    /// its implementation.
    const WORLD: &'static str;
    /// The trait object services use, e.g. `dyn StateStore`.
    type Store: ?Sized + Send + Sync + 'static;
}

/// The `state` world of `iii:adapter@0.1.0`.
pub struct StateWorld;
impl AdapterWorld for StateWorld {
    const WORLD: &'static str = "iii:adapter/state-adapter@0.1.0";
    type Store = dyn StateStore;
}

/// The `stream` world of `iii:adapter@0.1.0`.
pub struct StreamWorld;
impl AdapterWorld for StreamWorld {
    const WORLD: &'static str = "iii:adapter/stream-adapter@0.1.0";
    type Store = dyn StreamStore;
}

/// Loads adapters for services. Object-safe so a service can get it from its prepare context
/// without knowing the provider (the plugin host, or [`memory::MemoryLoader`] in tests).
#[async_trait]
pub trait AdapterLoader: Send + Sync {
    /// Loads `spec` as an implementation of `world` and returns an `Arc<W::Store>` boxed as
    /// `Any`. Use [`load`] instead of calling this directly.
    async fn load_any(
        &self,
        world: &'static str,
        spec: &AdapterSpec,
    ) -> Result<Box<dyn std::any::Any + Send + Sync>, AdapterError>;
}

/// Loads `spec` as an adapter of world `W`.
pub async fn load<W: AdapterWorld>(
    loader: &dyn AdapterLoader,
    spec: &AdapterSpec,
) -> Result<std::sync::Arc<W::Store>, AdapterError> {
    let any = loader.load_any(W::WORLD, spec).await?;
    any.downcast::<std::sync::Arc<W::Store>>()
        .map(|b| *b)
        .map_err(|_| {
            AdapterError::new(
                AdapterErrorKind::Other,
                format!(
                    "the adapter loader returned the wrong store type for {}",
                    W::WORLD
                ),
            )
        })
}
