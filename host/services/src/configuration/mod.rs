//! The `configuration` service (PROTOCOL.md §7.5, §5.5, §4.6.7, §8.7): settings entries with
//! a JSON Schema each, read and changed while the engine runs.
//!
//! - `configuration::register/set/get/list/schema`: any worker registers an id with a schema;
//!   `set` validates with the `jsonschema` crate and refuses an invalid value with the
//!   validator's message and the JSON pointer of the failing field; `get` expands `${VAR}` /
//!   `${VAR:default}` unless `raw`.
//! - The `configuration` trigger type fires on registered / updated / deleted.
//! - Builtin services' settings: each configurable service the composition root reports through
//!   [`ServiceControl`] is an entry under its worker name (`iii-http`); `set` hands the value to
//!   the control, which applies it by tier (`x-apply`) and says how it did.
//! - The store ([`store`]): one YAML file per id under `./config`, written atomically and
//!   watched; an external edit is applied like a `set`, and an invalid one is refused with a
//!   logged error naming the file, the previous value staying in force.
//! - `ttl_seconds > 0`: an entry nothing has subscribed to (no `configuration` trigger for its id
//!   or for every id) for that long is deleted.
//!
//! Mandatory: config entry `configuration`, worker name `configuration`.

pub mod schema;
pub mod store;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_core::config::ConfigError;
use iii_core::control::{ControlError, ServiceControl};
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, NoInput, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError, TriggerTypeSpec,
};
use iii_protocol::{codes, ErrorBody};
use jsonschema::Validator;
use parking_lot::Mutex;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use self::schema::SchemaError;
use self::store::{ConfigStore, FsStore, MemoryStore, StoredEntry};

/// The trigger type id and the `type` of its payloads.
pub const TRIGGER_TYPE: &str = "configuration";
const REGISTERED: &str = "configuration:registered";
const UPDATED: &str = "configuration:updated";
const DELETED: &str = "configuration:deleted";
const EVENTS: [&str; 3] = [REGISTERED, UPDATED, DELETED];

/// How long external edits are gathered before they are read (editors write a file in
/// several steps).
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The configuration service.
pub struct Configuration;

/// Which store holds the entries.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreChoice {
    /// `<project>/<directory>/<id>.yaml`.
    Fs {
        /// Relative to the project directory unless absolute.
        directory: PathBuf,
    },
    /// In memory, lost at exit.
    Memory,
}

/// What the `configuration` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigurationConfig {
    /// The store.
    pub store: StoreChoice,
    /// Delete entries nothing subscribed to for this long (`None`: never).
    pub ttl: Option<Duration>,
}

impl Default for ConfigurationConfig {
    fn default() -> Self {
        ConfigurationConfig {
            store: StoreChoice::Fs {
                directory: PathBuf::from("./config"),
            },
            ttl: None,
        }
    }
}

impl Service for Configuration {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "configuration",
            worker: "configuration",
            deprecated_names: &[],
            repeatable: false,
            always_on: true,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut cc = ConfigurationConfig::default();
        let Some(e) = entries.first() else {
            return Ok(Box::new(cc));
        };
        let at = e.key("config");
        let r = &e.reader;
        let Some(m) = r.mapping(e.config, &at)? else {
            return Ok(Box::new(cc));
        };
        r.check_keys(m, &at, &["adapter", "ttl_seconds"])?;
        if let Some(t) = m.get("ttl_seconds") {
            let n = r.u64(t, &format!("{at}.ttl_seconds"))?;
            cc.ttl = (n > 0).then(|| Duration::from_secs(n));
        }
        if let Some(a) = m.get("adapter").filter(|a| !a.is_null()) {
            let aat = format!("{at}.adapter");
            let Some(am) = r.mapping(a, &aat)? else {
                return Err(r.invalid(&aat, "a mapping {name, config}", a));
            };
            r.check_keys(am, &aat, &["name", "config"])?;
            let name = match am.get("name") {
                Some(n) => r.string(n, &format!("{aat}.name"))?,
                None => "fs".into(),
            };
            let cat = format!("{aat}.config");
            let conf = match am.get("config") {
                Some(c) => r.mapping(c, &cat)?,
                None => None,
            };
            cc.store = match name.as_str() {
                "fs" => {
                    let mut directory = PathBuf::from("./config");
                    if let Some(c) = conf {
                        r.check_keys(c, &cat, &["directory"])?;
                        if let Some(d) = c.get("directory") {
                            let d = r.string(d, &format!("{cat}.directory"))?;
                            if d.trim().is_empty() {
                                return Err(r.error(format!("`{cat}.directory` must not be empty")));
                            }
                            directory = PathBuf::from(d);
                        }
                    }
                    StoreChoice::Fs { directory }
                }
                "memory" => {
                    if let Some(c) = conf {
                        r.check_keys(c, &cat, &[])?;
                    }
                    StoreChoice::Memory
                }
                "bridge" => {
                    return Err(r.error(format!(
                        "`{aat}.name`: the `bridge` configuration adapter is not available in this engine; use `fs` (the default) or `memory`"
                    )))
                }
                other => {
                    return Err(r.error(format!(
                        "`{aat}.name`: unknown configuration adapter `{other}`; use `fs` (the default) or `memory`"
                    )))
                }
            };
        }
        Ok(Box::new(cc))
    }
}

#[async_trait::async_trait]
impl Configured for ConfigurationConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let store: Arc<dyn ConfigStore> = match &self.store {
            StoreChoice::Fs { directory } => {
                let dir = cx.project_dir().join(directory);
                Arc::new(FsStore::open(dir.clone()).map_err(|e| StartError::Service {
                    service: "configuration",
                    message: format!("its store cannot be opened: {e}"),
                })?)
            }
            StoreChoice::Memory => Arc::new(MemoryStore::default()),
        };
        // Without a composition root that controls services (unit tests, embedders), only
        // workers' own entries exist.
        let control = cx.get::<Arc<dyn ServiceControl>>("configuration").ok();
        let shared = Shared::open(store, control, self.ttl).await?;
        Ok(Box::new(ConfigurationService {
            shared: Arc::new(shared),
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// One entry as the service holds it.
struct Item {
    /// Id, name, description, the value as set (unexpanded), schema, metadata.
    entry: StoredEntry,
    /// The compiled schema; `Err` when it cannot be used (only entries read from files can
    /// have one: `register` refuses such schemas).
    validator: Result<Arc<Validator>, String>,
    /// A builtin service's settings (its value is applied through the control).
    builtin: bool,
    /// When something last subscribed to it (for `ttl_seconds`).
    seen: Instant,
}

impl Item {
    fn schema(&self) -> &Value {
        self.entry.schema.as_ref().unwrap_or(&Value::Null)
    }

    fn description_json(&self) -> Value {
        let mut v = json!({"id": self.entry.id, "name": self.entry.name,
            "description": self.entry.description, "schema": self.schema()});
        if let Some(m) = &self.entry.metadata {
            v["metadata"] = m.clone();
        }
        v
    }
}

/// What the functions, the watcher and the expiry task share.
pub(crate) struct Shared {
    items: Mutex<BTreeMap<String, Item>>,
    store: Arc<dyn ConfigStore>,
    control: Option<Arc<dyn ServiceControl>>,
    /// One change at a time: validate → apply → store → publish is not interleaved.
    writes: tokio::sync::Mutex<()>,
    /// The bytes last written or accepted per id, so the watcher skips its own writes.
    known: Mutex<HashMap<String, Option<Vec<u8>>>>,
    ttl: Option<Duration>,
    /// Changes to publish, delivered one at a time by the service's task so subscribers see
    /// them in the order they happened.
    events: tokio::sync::mpsc::UnboundedSender<Change>,
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Change>>>,
}

/// Why a change was refused, as its wire error.
fn refuse(code: &str, message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(code, message)
}

/// Ids become file names: letters, digits and `._:-`, not starting with a dot.
fn check_id(id: &str) -> Result<(), ErrorBody> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'));
    if ok {
        Ok(())
    } else {
        Err(refuse(
            codes::INVALID_ID,
            format!("invalid configuration id `{id}`: use 1 to 128 letters, digits and `._:-`, not starting with `.`"),
        ))
    }
}

fn schema_error(e: SchemaError) -> ErrorBody {
    match e {
        SchemaError::Invalid(_) => refuse(codes::SCHEMA_INVALID, e.to_string()),
        SchemaError::Unavailable(_) => refuse(codes::SCHEMA_UNAVAILABLE, e.to_string()),
    }
}

/// `value` expanded and checked against `item`'s schema: what a service or reader gets.
fn resolved(item: &Item, value: &Value) -> Result<Value, ErrorBody> {
    let v = schema::expand(value, item.entry.schema.as_ref(), &schema::env)
        .map_err(|e| refuse(codes::EXPAND_FAILED, e.to_string()))?;
    let validator = item.validator.as_ref().map_err(|e| {
        refuse(
            codes::SCHEMA_UNAVAILABLE,
            format!("the schema of `{}` cannot be used: {e}", item.entry.id),
        )
    })?;
    schema::check(validator, &v).map_err(|e| refuse(codes::SCHEMA_INVALID, e.to_string()))?;
    Ok(v)
}

fn control_error(e: ControlError) -> ErrorBody {
    match &e {
        ControlError::Unknown(_) => refuse(codes::NOT_REGISTERED, e.to_string()),
        ControlError::Invalid { .. } => refuse(codes::SCHEMA_INVALID, e.to_string()),
        ControlError::Start { .. } => refuse(codes::APPLY_FAILED, e.to_string()),
    }
}

/// An event for the `configuration` trigger: one entry before and after a change.
struct Change {
    event: &'static str,
    id: String,
    description: Value,
    old: Value,
    new: Value,
}

impl Shared {
    /// Loads the stored entries and the builtin services' settings; a stored value for a
    /// builtin is handed to the control so the service starts with it.
    async fn open(
        store: Arc<dyn ConfigStore>,
        control: Option<Arc<dyn ServiceControl>>,
        ttl: Option<Duration>,
    ) -> Result<Shared, StartError> {
        let s = store.clone();
        let loaded = tokio::task::spawn_blocking(move || s.load_all())
            .await
            .map_err(|e| StartError::Service {
                service: "configuration",
                message: e.to_string(),
            })?
            .map_err(|e| StartError::Service {
                service: "configuration",
                message: format!("its store cannot be read: {e}"),
            })?;
        let mut stored = BTreeMap::new();
        let mut known = HashMap::new();
        for (id, got) in loaded {
            match got {
                Ok(e) if e.id == id => {
                    known.insert(id.clone(), store.read_raw(&id).ok().flatten());
                    stored.insert(id, e);
                }
                Ok(e) => tracing::error!(
                    file = %store.describe(&id),
                    "configuration file ignored: its id is `{}`, but the file is named for `{id}`",
                    e.id
                ),
                Err(e) => {
                    tracing::error!(file = %store.describe(&id), "configuration file ignored: {e}")
                }
            }
        }
        let now = Instant::now();
        let mut items = BTreeMap::new();
        for s in control.iter().flat_map(|c| c.settings()) {
            let mut item = Item {
                entry: StoredEntry {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    description: s.description.clone(),
                    value: s.value.clone(),
                    schema: Some(s.schema.clone()),
                    metadata: Some(json!({"builtin": true, "entry": s.name})),
                },
                validator: schema::compile(&s.schema).map_err(|e| e.to_string()),
                builtin: true,
                seen: now,
            };
            if let Err(e) = &item.validator {
                tracing::error!(id = %s.id, "the {} service's config schema cannot be compiled: {e}", s.name);
            }
            if let Some(st) = stored.remove(&s.id) {
                let file = store.describe(&s.id);
                let applied = match resolved(&item, &st.value) {
                    Ok(v) => control
                        .as_ref()
                        .expect("settings come from the control")
                        .apply(&s.id, v)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.message),
                };
                match applied {
                    Ok(_) => {
                        tracing::info!(id = %s.id, file = %file, "the {} service starts with its stored configuration", s.name);
                        item.entry.value = st.value;
                    }
                    Err(e) => tracing::error!(
                        id = %s.id, file = %file,
                        "stored configuration refused; the service starts with its config.yaml block: {e}"
                    ),
                }
            }
            items.insert(s.id, item);
        }
        for (id, e) in stored {
            let validator = match &e.schema {
                Some(sc) => schema::compile(sc).map_err(|x| x.to_string()),
                None => Err("the stored entry has no schema".into()),
            };
            if let Err(x) = &validator {
                tracing::warn!(file = %store.describe(&id), "configuration entry `{id}` has no usable schema ({x}); `set` refuses values until it is registered again");
            }
            items.insert(
                id,
                Item {
                    entry: e,
                    validator,
                    builtin: false,
                    seen: now,
                },
            );
        }
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Shared {
            events,
            events_rx: Mutex::new(Some(events_rx)),
            items: Mutex::new(items),
            store,
            control,
            writes: tokio::sync::Mutex::new(()),
            known: Mutex::new(known),
            ttl,
        })
    }

    /// Queues `c` for the `configuration` trigger.
    fn publish(&self, c: Change) {
        let _ = self.events.send(c);
    }

    async fn persist(&self, entry: StoredEntry) -> Result<(), ErrorBody> {
        let store = self.store.clone();
        let id = entry.id.clone();
        let bytes = tokio::task::spawn_blocking(move || store.put(&entry))
            .await
            .map_err(|e| refuse(codes::ADAPTER_ERROR, e.to_string()))?
            .map_err(|e| refuse(codes::ADAPTER_ERROR, e.to_string()))?;
        self.known.lock().insert(id, Some(bytes));
        Ok(())
    }

    async fn remove_stored(&self, id: &str) -> Result<(), ErrorBody> {
        let store = self.store.clone();
        let key = id.to_string();
        tokio::task::spawn_blocking(move || store.delete(&key))
            .await
            .map_err(|e| refuse(codes::ADAPTER_ERROR, e.to_string()))?
            .map_err(|e| refuse(codes::ADAPTER_ERROR, e.to_string()))?;
        self.known.lock().insert(id.to_string(), None);
        Ok(())
    }

    /// `configuration::register`.
    async fn register(&self, i: RegisterIn) -> Result<(Value, Option<Change>), ErrorBody> {
        check_id(&i.id)?;
        let validator = schema::compile(&i.schema).map_err(schema_error)?;
        let _w = self.writes.lock().await;
        let (old, existed) = {
            let items = self.items.lock();
            match items.get(&i.id) {
                Some(it) if it.builtin => {
                    return Err(refuse(
                        codes::INVALID_ID,
                        format!(
                        "`{}` holds the settings of the engine's {} service; register another id",
                        i.id, it.entry.name
                    ),
                    ))
                }
                Some(it) => (Some(it.entry.clone()), true),
                None => (None, false),
            }
        };
        let mut item = Item {
            entry: StoredEntry {
                id: i.id.clone(),
                name: i.name.unwrap_or_else(|| i.id.clone()),
                description: i.description.unwrap_or_default(),
                value: Value::Null,
                schema: Some(i.schema),
                metadata: i.metadata,
            },
            validator: Ok(validator),
            builtin: false,
            seen: Instant::now(),
        };
        // A stored value stays authoritative while it satisfies the schema; otherwise the
        // initial value (which must) replaces it.
        let kept = old
            .as_ref()
            .map(|o| o.value.clone())
            .filter(|v| !v.is_null() && resolved(&item, v).is_ok());
        item.entry.value = match (kept, i.initial_value) {
            (Some(v), _) => v,
            (None, Some(v)) => {
                resolved(&item, &v)?;
                v
            }
            (None, None) => Value::Null,
        };
        if let Some(o) = &old {
            if !o.value.is_null() && o.value != item.entry.value {
                tracing::warn!(id = %i.id, "the stored value does not satisfy the new schema; the initial value replaces it");
            }
        }
        let unchanged = old.as_ref() == Some(&item.entry);
        if !unchanged {
            self.persist(item.entry.clone()).await?;
        }
        let mut answer = item.description_json();
        answer["value"] = item.entry.value.clone();
        let change = (!unchanged).then(|| Change {
            event: if existed { UPDATED } else { REGISTERED },
            id: i.id.clone(),
            description: item.description_json(),
            old: old.map(|o| o.value).unwrap_or(Value::Null),
            new: item.entry.value.clone(),
        });
        self.items.lock().insert(i.id, item);
        Ok((answer, change))
    }

    /// `configuration::set`, and an accepted external edit (`from_file`: the bytes now on
    /// disk, which are not rewritten).
    async fn set(
        &self,
        id: &str,
        value: Value,
        from_file: Option<Vec<u8>>,
    ) -> Result<(Value, Change), ErrorBody> {
        check_id(id)?;
        let _w = self.writes.lock().await;
        self.sync_builtin(id);
        let (builtin, old, expanded, mut entry, description) = {
            let items = self.items.lock();
            let item = items.get(id).ok_or_else(|| {
                refuse(
                    codes::NOT_REGISTERED,
                    format!("no configuration is registered under `{id}`; call configuration::register first"),
                )
            })?;
            let expanded = resolved(item, &value)?;
            let mut entry = item.entry.clone();
            entry.value = value.clone();
            (
                item.builtin,
                item.entry.value.clone(),
                expanded,
                entry,
                item.description_json(),
            )
        };
        let mut applied = None;
        if builtin {
            let control = self.control.as_ref().ok_or_else(|| {
                refuse(
                    codes::NOT_REGISTERED,
                    format!("no service control for `{id}`"),
                )
            })?;
            applied = Some(control.apply(id, expanded).await.map_err(control_error)?);
        }
        match from_file {
            Some(bytes) => {
                self.known.lock().insert(id.to_string(), Some(bytes));
            }
            None => {
                if let Err(mut e) = self.persist(entry.clone()).await {
                    if builtin {
                        e.message = format!(
                            "applied to the running service but not stored: {}",
                            e.message
                        );
                        self.update_value(id, &value);
                    }
                    return Err(e);
                }
            }
        }
        entry.value = value.clone();
        self.update_value(id, &value);
        let mut answer = json!({"old_value": old, "new_value": value});
        if let Some(a) = applied {
            answer["applied"] = serde_json::to_value(a).unwrap_or(Value::Null);
        }
        Ok((
            answer,
            Change {
                event: UPDATED,
                id: id.to_string(),
                description,
                old,
                new: value,
            },
        ))
    }

    fn update_value(&self, id: &str, value: &Value) {
        if let Some(it) = self.items.lock().get_mut(id) {
            it.entry.value = value.clone();
        }
    }

    /// After the running settings changed: a builtin whose running value is no longer this
    /// entry's (a `config.yaml` reload changed it) takes the running value, its stored file
    /// (if it has one) is rewritten so the next start agrees with the running engine, and an
    /// `updated` event is returned for each.
    async fn follow_builtins(&self) -> Vec<Change> {
        let Some(control) = self.control.clone() else {
            return Vec::new();
        };
        // A `set` in progress holds this until its own value is recorded.
        let _w = self.writes.lock().await;
        let mut changes = Vec::new();
        for s in control.settings() {
            let (old, entry, description) = {
                let mut items = self.items.lock();
                let Some(item) = items.get_mut(&s.id).filter(|it| it.builtin) else {
                    continue;
                };
                let ours =
                    schema::expand(&item.entry.value, item.entry.schema.as_ref(), &schema::env)
                        .unwrap_or_else(|_| item.entry.value.clone());
                if ours == s.value {
                    continue;
                }
                let old = std::mem::replace(&mut item.entry.value, s.value.clone());
                (old, item.entry.clone(), item.description_json())
            };
            let stored = self.known.lock().get(&s.id).is_some_and(Option::is_some);
            if stored {
                if let Err(e) = self.persist(entry).await {
                    tracing::warn!(id = %s.id, "the stored value could not follow the running one: {}", e.message);
                }
            }
            changes.push(Change {
                event: UPDATED,
                id: s.id.clone(),
                description,
                old,
                new: s.value,
            });
        }
        changes
    }

    /// A builtin service may have been changed by other means (a `config.yaml` reload): when
    /// the value it runs with is not what this entry's value expands to, the running value
    /// becomes the entry's value.
    fn sync_builtin(&self, id: &str) {
        let Some(control) = &self.control else { return };
        let mut items = self.items.lock();
        let Some(item) = items.get_mut(id).filter(|it| it.builtin) else {
            return;
        };
        let Some(running) = control
            .settings()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| s.value)
        else {
            return;
        };
        let ours = schema::expand(&item.entry.value, item.entry.schema.as_ref(), &schema::env)
            .unwrap_or_else(|_| item.entry.value.clone());
        if ours != running {
            item.entry.value = running;
        }
    }

    /// `configuration::get`.
    fn get(&self, id: &str, raw: bool) -> Result<Value, ErrorBody> {
        self.sync_builtin(id);
        let items = self.items.lock();
        let item = items.get(id).ok_or_else(|| {
            refuse(
                codes::NOT_FOUND,
                format!("no configuration is registered under `{id}`"),
            )
        })?;
        let value = if raw || item.entry.value.is_null() {
            item.entry.value.clone()
        } else {
            resolved(item, &item.entry.value)?
        };
        Ok(json!({"id": id, "value": value}))
    }

    fn list(&self) -> Value {
        let items = self.items.lock();
        let rows: Vec<Value> = items.values().map(Item::description_json).collect();
        json!({ "configurations": rows })
    }

    fn schema(&self, id: &str) -> Result<Value, ErrorBody> {
        self.items
            .lock()
            .get(id)
            .map(Item::description_json)
            .ok_or_else(|| {
                refuse(
                    codes::NOT_FOUND,
                    format!("no configuration is registered under `{id}`"),
                )
            })
    }

    /// Removes a worker entry (expiry, or its file deleted). Builtin entries stay: a deleted
    /// file only drops the stored value, the running service keeps its settings.
    async fn delete(&self, id: &str, file_gone: bool) -> Option<Change> {
        let _w = self.writes.lock().await;
        let item = {
            let mut items = self.items.lock();
            match items.get(id) {
                Some(it) if it.builtin => {
                    drop(items);
                    self.known.lock().insert(id.to_string(), None);
                    tracing::info!(id, "stored configuration removed; the running service keeps its settings, and the next start uses config.yaml");
                    return None;
                }
                Some(_) => items.remove(id)?,
                None => return None,
            }
        };
        if !file_gone {
            if let Err(e) = self.remove_stored(id).await {
                tracing::error!(id, "cannot remove the stored configuration: {}", e.message);
            }
        } else {
            self.known.lock().insert(id.to_string(), None);
        }
        Some(Change {
            event: DELETED,
            id: id.to_string(),
            description: item.description_json(),
            old: item.entry.value,
            new: Value::Null,
        })
    }

    /// Reads the external edit of `id`'s file and applies it, or refuses it with a logged error
    /// naming the file. Returns the change to publish.
    async fn external_edit(&self, id: &str) -> Option<Change> {
        let file = self.store.describe(id);
        let bytes = match self.store.read_raw(id) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(file = %file, "cannot read the configuration file: {e}");
                return None;
            }
        };
        if self.known.lock().get(id) == Some(&bytes) {
            return None; // our own write, or nothing new
        }
        let Some(bytes) = bytes else {
            return self.delete(id, true).await;
        };
        let entry = match store::from_yaml(&bytes, &file) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(file = %file, "external edit rejected, the previous value stays: {e}");
                return None;
            }
        };
        if entry.id != id {
            tracing::error!(file = %file, "external edit rejected, the previous value stays: its id is `{}`, but the file is named for `{id}`", entry.id);
            return None;
        }
        let current = self.items.lock().get(id).map(|it| it.entry.value.clone());
        if current.as_ref() == Some(&entry.value) {
            // Only the layout, name or description changed: nothing to apply.
            self.known.lock().insert(id.to_string(), Some(bytes));
            return None;
        }
        let result = if current.is_some() {
            self.set(id, entry.value, Some(bytes)).await.map(|(_, c)| c)
        } else {
            // A new file is an entry registered from disk; it must carry its schema.
            match entry.schema.clone() {
                None => Err(refuse(
                    codes::SCHEMA_UNAVAILABLE,
                    "a new entry's file must carry a `schema`",
                )),
                Some(sc) => {
                    let i = RegisterIn {
                        id: id.to_string(),
                        name: Some(entry.name),
                        description: Some(entry.description),
                        schema: sc,
                        initial_value: Some(entry.value),
                        metadata: entry.metadata,
                    };
                    // Registering rewrites the file in the store's layout and remembers those
                    // bytes, so the rewrite is not taken for another edit.
                    match self.register(i).await.map(|(_, c)| c) {
                        Ok(None) => return None,
                        Ok(Some(c)) => Ok(c),
                        Err(e) => Err(e),
                    }
                }
            }
        };
        match result {
            Ok(c) => {
                tracing::info!(file = %file, "external edit of configuration `{id}` applied");
                Some(c)
            }
            Err(e) => {
                tracing::error!(file = %file, code = %e.code, "external edit rejected, the previous value stays: {}", e.message);
                None
            }
        }
    }

    /// Deletes worker entries nothing has subscribed to for the ttl.
    async fn expire(&self, core: &Core, ttl: Duration) {
        let bindings = core.triggers().armed_bindings(TRIGGER_TYPE);
        let now = Instant::now();
        let expired: Vec<String> = {
            let mut items = self.items.lock();
            let mut out = Vec::new();
            for (id, it) in items.iter_mut().filter(|(_, it)| !it.builtin) {
                if bindings.iter().any(|b| subscribes(&b.config, id)) {
                    it.seen = now;
                } else if now.duration_since(it.seen) >= ttl {
                    out.push(id.clone());
                }
            }
            out
        };
        for id in expired {
            if let Some(c) = self.delete(&id, false).await {
                tracing::info!(id = %id, "configuration expired: nothing subscribed to it for {}s", ttl.as_secs());
                self.publish(c);
            }
        }
    }
}

/// Does a binding config listen to entry `id`?
fn subscribes(config: &Value, id: &str) -> bool {
    crate::common::filter_eq(config, "configuration_id", id)
}

/// Fires the `configuration` trigger for `c` (values expanded; a value that cannot be expanded
/// is sent as stored) and waits for the handlers, so events reach them in order.
async fn deliver(core: &Core, c: Change) {
    let schema = c.description.get("schema").cloned();
    let expand = |v: Value| schema::expand(&v, schema.as_ref(), &schema::env).unwrap_or(v);
    let mut payload = json!({"type": TRIGGER_TYPE, "event_type": c.event,
        "old_value": expand(c.old), "new_value": expand(c.new)});
    if let (Some(p), Some(d)) = (payload.as_object_mut(), c.description.as_object()) {
        for (k, v) in d {
            p.insert(k.clone(), v.clone());
        }
    }
    let (id, event) = (c.id, c.event);
    core.fire_matching(TRIGGER_TYPE, &payload, move |cfg| {
        subscribes(cfg, &id)
            && match cfg.get("event_types") {
                Some(Value::Array(a)) => a.iter().any(|e| e == event),
                _ => true,
            }
    })
    .await;
}

/// The `configuration` trigger type: arming checks the binding config.
struct ConfigTriggerType;

impl BuiltinTriggerType for ConfigTriggerType {
    fn register(&self, b: &Binding) -> Result<(), String> {
        let m = match &b.config {
            Value::Null => return Ok(()),
            Value::Object(m) => m,
            _ => return Err("trigger config must be an object".into()),
        };
        for k in ["configuration_id", "condition_function_id"] {
            if m.get(k).is_some_and(|v| !v.is_null() && !v.is_string()) {
                return Err(format!("`{k}` must be a string"));
            }
        }
        match m.get("event_types") {
            None | Some(Value::Null) => Ok(()),
            Some(Value::Array(a)) => {
                for e in a {
                    if !e.as_str().is_some_and(|s| EVENTS.contains(&s)) {
                        return Err(format!(
                            "`event_types` holds {e}; each must be one of {}",
                            EVENTS.join(", ")
                        ));
                    }
                }
                Ok(())
            }
            Some(_) => Err("`event_types` must be a list".into()),
        }
    }
    fn unregister(&self, _b: &Binding) {}
}

#[derive(Deserialize, JsonSchema)]
struct RegisterIn {
    /// The id (letters, digits, `._:-`).
    id: String,
    name: Option<String>,
    description: Option<String>,
    /// JSON Schema of the value (draft 7 or 2020-12 by `$schema`; 2020-12 by default).
    schema: Value,
    /// Used when nothing valid is stored yet.
    initial_value: Option<Value>,
    metadata: Option<Value>,
}

#[derive(Deserialize, JsonSchema)]
struct SetIn {
    id: String,
    value: Value,
}

#[derive(Deserialize, JsonSchema)]
struct GetIn {
    id: String,
    /// Return the value as stored, placeholders unexpanded.
    #[serde(default)]
    raw: bool,
}

#[derive(Deserialize, JsonSchema)]
struct IdIn {
    id: String,
}

/// The prepared service.
pub struct ConfigurationService {
    shared: Arc<Shared>,
}

fn entry_schema() -> Value {
    json!({"type": "object", "properties": {"id": {"type": "string"}, "name": {"type": "string"},
        "description": {"type": "string"}, "schema": {}, "value": {}, "metadata": {}}})
}

impl Prepared for ConfigurationService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        reg.trigger_type(TriggerTypeSpec {
            id: TRIGGER_TYPE.into(),
            description: "Fires when a configuration entry is registered, updated or deleted"
                .into(),
            config_schema: Some(json!({"type": "object", "properties": {
                "configuration_id": {"type": "string"},
                "event_types": {"type": "array", "items": {"enum": EVENTS}},
                "condition_function_id": {"type": "string"}}})),
            request_schema: Some(json!({"type": "object", "properties": {
                "type": {"const": TRIGGER_TYPE}, "event_type": {"enum": EVENTS},
                "id": {"type": "string"}, "name": {"type": "string"},
                "description": {"type": "string"}, "schema": {}, "old_value": {},
                "new_value": {}, "metadata": {}}})),
            response_schema: None,
            provider: Arc::new(ConfigTriggerType),
        });
        let sh = self.shared.clone();
        reg.function(
            FunctionSpec::typed(
                "configuration::register",
                "Register a configuration id with its JSON Schema (idempotent)",
                move |_core, _ctx, i: RegisterIn| {
                    let sh = sh.clone();
                    async move {
                        let (answer, change) = sh.register(i).await?;
                        if let Some(c) = change {
                            sh.publish(c);
                        }
                        Ok(answer)
                    }
                },
            )
            .returns(entry_schema()),
        );
        let sh = self.shared.clone();
        reg.function(
            FunctionSpec::typed(
                "configuration::set",
                "Validate a value against the entry's schema and store (and apply) it",
                move |_core, _ctx, i: SetIn| {
                    let sh = sh.clone();
                    async move {
                        let (answer, change) = sh.set(&i.id, i.value, None).await?;
                        sh.publish(change);
                        Ok(answer)
                    }
                },
            )
            .returns(json!({"type": "object", "properties": {"old_value": {}, "new_value": {},
                "applied": {"type": "object", "properties": {
                    "tier": {"enum": ["live", "rebind", "restart", null]}, "note": {"type": "string"}}}}})),
        );
        let sh = self.shared.clone();
        reg.function(
            FunctionSpec::typed(
                "configuration::get",
                "Read an entry's value (${VAR:default} expanded unless raw)",
                move |_core, _ctx, i: GetIn| {
                    let r = sh.get(&i.id, i.raw);
                    async move { r }
                },
            )
            .returns(
                json!({"type": "object", "properties": {"id": {"type": "string"}, "value": {}}}),
            ),
        );
        let sh = self.shared.clone();
        reg.function(
            FunctionSpec::typed(
                "configuration::list",
                "Every entry's id, name, description and schema, sorted by id (never values)",
                move |_core, _ctx, _i: NoInput| {
                    let r = sh.list();
                    async move { Ok(r) }
                },
            )
            .returns(
                json!({"type": "object", "properties": {"configurations": {"type": "array"}}}),
            ),
        );
        let sh = self.shared.clone();
        reg.function(
            FunctionSpec::typed(
                "configuration::schema",
                "An entry's id, name, description and schema",
                move |_core, _ctx, i: IdIn| {
                    let r = sh.schema(&i.id);
                    async move { r }
                },
            )
            .returns(entry_schema()),
        );
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let shared = self.shared;
        if let Some(mut rx) = shared.events_rx.lock().take() {
            let (core, stop) = (core.clone(), stop.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        c = rx.recv() => match c {
                            Some(c) => deliver(&core, c).await,
                            None => return,
                        },
                    }
                }
            });
        }
        // The watch is armed before `run` returns (not when its task is first polled), so an
        // edit made as soon as the engine is up is never missed.
        let watch = shared
            .store
            .watch_dir()
            .map(|d| d.to_path_buf())
            .map(|d| (watch(&d), d));
        let (mut rx, watcher) = match watch {
            Some((Ok((rx, w)), _)) => (Some(rx), Some(w)),
            Some((Err(e), d)) => {
                tracing::error!(directory = %d.display(), "external edits of configuration files are not watched: {e}");
                (None, None)
            }
            None => (None, None),
        };
        Some(Box::pin(async move {
            let _watcher = watcher;
            let mut tick = tokio::time::interval(
                shared
                    .ttl
                    .map_or(Duration::from_secs(3600), |t| t.min(Duration::from_secs(1))),
            );
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut changes = shared.control.as_ref().map(|c| c.changes());
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = async { changes.as_mut().expect("guarded").changed().await }, if changes.is_some() => {
                        if changed.is_err() {
                            changes = None;
                            continue;
                        }
                        for c in shared.follow_builtins().await {
                            shared.publish(c);
                        }
                    }
                    _ = tick.tick(), if shared.ttl.is_some() => {
                        shared.expire(&core, shared.ttl.unwrap_or_default()).await;
                    }
                    first = async { rx.as_mut().expect("guarded").recv().await }, if rx.is_some() => {
                        let Some(first) = first else { rx = None; continue };
                        let mut ids: HashSet<String> = first.into_iter().collect();
                        let deadline = tokio::time::sleep(DEBOUNCE);
                        tokio::pin!(deadline);
                        loop {
                            tokio::select! {
                                _ = &mut deadline => break,
                                more = rx.as_mut().expect("guarded").recv() => match more {
                                    Some(m) => ids.extend(m),
                                    None => break,
                                },
                            }
                        }
                        let mut ids: Vec<String> = ids.into_iter().collect();
                        ids.sort();
                        for id in ids {
                            if let Some(c) = shared.external_edit(&id).await {
                                shared.publish(c);
                            }
                        }
                    }
                }
            }
        }))
    }
}

type Events = tokio::sync::mpsc::UnboundedReceiver<Vec<String>>;

/// Watches `dir` (not recursively); each event is the ids of the `<id>.yaml` files it touched.
fn watch(dir: &std::path::Path) -> Result<(Events, notify::RecommendedWatcher), notify::Error> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| match ev {
        Ok(ev) => {
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            let ids: Vec<String> = ev.paths.iter().filter_map(|p| FsStore::id_of(p)).collect();
            if !ids.is_empty() {
                let _ = tx.send(ids);
            }
        }
        Err(e) => tracing::warn!("configuration watcher: {e}"),
    })?;
    w.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((rx, w))
}
