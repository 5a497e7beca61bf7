//! What the engine calls: storage traits with JSON values, independent of
//! how the adapter runs.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::PluginError;

/// Result of `set`: the replaced value and the stored one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    pub old_value: Option<Value>,
    pub new_value: Value,
}

/// One failed op of an `update` (`errors[]` of the result).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateOpError {
    pub op_index: usize,
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_url: Option<String>,
}

/// Result of `update`; serialises as the spec's
/// `{"old_value","new_value","errors"?}` (`errors` omitted when empty).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateResult {
    pub old_value: Option<Value>,
    pub new_value: Value,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<UpdateOpError>,
}

/// `path` of merge/append: one literal key or a list of literal keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SegmentPath {
    One(String),
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

/// An `UpdateOp` as sent by SDKs (protocol §8.3), tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum UpdateOp {
    Set {
        path: String,
        /// A missing value sets `null`.
        #[serde(default)]
        value: Value,
    },
    Merge {
        #[serde(default)]
        path: Option<SegmentPath>,
        value: Value,
    },
    Increment {
        path: String,
        by: i64,
    },
    Decrement {
        path: String,
        by: i64,
    },
    Append {
        #[serde(default)]
        path: Option<SegmentPath>,
        value: Value,
    },
    Remove {
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
    pub id: String,
    pub groups: Vec<String>,
}

/// A state adapter (protocol §8.1). Calls on one adapter are serialised.
#[async_trait]
pub trait StateStore: Send + Sync {
    async fn get(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError>;
    async fn set(&self, scope: &str, key: &str, value: &Value) -> Result<SetResult, PluginError>;
    /// Returns the removed value; `None` (and no effect) when absent.
    async fn delete(&self, scope: &str, key: &str) -> Result<Option<Value>, PluginError>;
    async fn update(
        &self,
        scope: &str,
        key: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError>;
    async fn list(&self, scope: &str) -> Result<Vec<Value>, PluginError>;
    async fn list_groups(&self) -> Result<Vec<String>, PluginError>;
}

/// A stream adapter's storage (protocol §8.2); fan-out stays in the engine.
#[async_trait]
pub trait StreamStore: Send + Sync {
    async fn get(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError>;
    async fn set(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        value: &Value,
    ) -> Result<SetResult, PluginError>;
    async fn delete(
        &self,
        stream: &str,
        group: &str,
        item: &str,
    ) -> Result<Option<Value>, PluginError>;
    async fn update(
        &self,
        stream: &str,
        group: &str,
        item: &str,
        ops: &[UpdateOp],
    ) -> Result<UpdateResult, PluginError>;
    async fn list(&self, stream: &str, group: &str) -> Result<Vec<Value>, PluginError>;
    async fn list_groups(&self, stream: &str) -> Result<Vec<String>, PluginError>;
    async fn list_all(&self) -> Result<Vec<StreamGroups>, PluginError>;
}
