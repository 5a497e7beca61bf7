//! Trigger types and bindings (PROTOCOL.md §4): provider resolution, parking of bindings whose type
//! does not exist yet, replay to a (re)registering provider, re-homing, worker-provided types.
//!
//! Methods run under the registry lock and never await: frames for worker providers are
//! returned as [`Sends`] and delivered by the caller after the lock is released, in order.

use iii_protocol::codes;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_protocol::{out, ErrorBody, Frame};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::conn::Conn;
use crate::core::{Core, DEFAULT_NS};

/// Frames to send to worker providers once the registry lock is released, in order.
pub type Sends = Vec<(Arc<Conn>, String)>;

/// Sends `sends` in order; a closed connection is skipped.
pub async fn deliver(sends: Sends) {
    for (conn, frame) in sends {
        let _ = conn.send(frame).await;
    }
}

/// A trigger type implemented inside the engine (`http`, `engine::workers-available`, …).
pub trait BuiltinTriggerType: Send + Sync {
    /// Arms a binding; an error is reported to the originator as `trigger_registration_failed`.
    fn register(&self, binding: &Binding) -> Result<(), String>;
    /// Disarms a binding.
    fn unregister(&self, binding: &Binding);
}

#[derive(Clone)]
/// Who provides a trigger type.
pub enum Provider {
    /// A service, in process.
    Builtin(Arc<dyn BuiltinTriggerType>),
    /// A worker connection.
    Remote(Arc<Conn>),
}

#[derive(Clone)]
/// A registered trigger type.
pub struct TriggerTypeEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its id, e.g. `http`.
    pub id: String,
    /// One line for listings.
    pub description: String,
    /// JSON Schema of a binding's config.
    pub trigger_request_format: Option<Value>,
    /// JSON Schema of what a bound function receives.
    pub call_request_format: Option<Value>,
    /// JSON Schema of what a bound function returns (service-provided types only).
    pub response_format: Option<Value>,
    /// Who provides it.
    pub provider: Provider,
    /// The in-process worker that provides a service's type.
    pub worker: Option<&'static str>,
}

impl TriggerTypeEntry {
    /// The worker name listings show for it.
    pub fn worker_name(&self) -> String {
        match &self.provider {
            Provider::Remote(c) => c.name().unwrap_or_else(|| c.id_str.clone()),
            Provider::Builtin(_) => self.worker.unwrap_or("engine").to_string(),
        }
    }
}

type TypeKey = (String, String);

#[derive(Clone, Debug)]
/// A trigger binding: a function bound to a trigger type with a config.
pub struct Binding {
    /// The binding id.
    pub id: String,
    /// The trigger type it binds to.
    pub trigger_type: String,
    /// The function it calls.
    pub function_id: String,
    /// Its config (route, filter, schedule …).
    pub config: Value,
    /// Metadata handed to every call.
    pub metadata: Option<Value>,
    /// Connection that registered it; `None` for `engine::register_trigger` bindings.
    pub owner: Option<u128>,
    /// Namespace the target function resolves in.
    pub namespace: String,
    /// The namespace of the trigger type, when it differs from the function's.
    pub trigger_namespace: Option<String>,
    /// The namespace it was registered in, where it moves back to when a provider appears.
    pub home_namespace: String,
    /// Resolved provider, `None` while parked.
    pub provider: Option<TypeKey>,
}

#[derive(Default)]
/// Trigger types and bindings; methods never await (see the module doc).
pub struct TriggerRegistry {
    types: BTreeMap<TypeKey, TriggerTypeEntry>,
    bindings: HashMap<String, Binding>,
    /// `engine::register_trigger` calls waiting for a worker provider's answer, by binding id.
    ack_waiters: HashMap<String, tokio::sync::oneshot::Sender<Option<ErrorBody>>>,
    /// `registertrigger` frames sent to worker providers and not yet answered, by binding id.
    unacked: HashMap<String, Unacked>,
}

/// A `registertrigger` a worker provider has not answered yet.
///
/// The official Python SDK stores a trigger type's handler only after it sent
/// `registertriggertype`, and silently drops a `registertrigger` for a type it
/// has no handler for; a binding replayed at once to a new provider can land in
/// that gap and would never be armed. Every SDK answers `registertrigger` with a
/// `triggerregistrationresult`, and re-sending an id replaces the binding (spec
/// §2.2), so an unanswered frame is sent again a bounded number of times.
struct Unacked {
    conn_id: u128,
    sent_at: Instant,
    resends: u32,
}

/// Waits before each resend of an unanswered `registertrigger`.
pub const RESEND_AFTER: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

fn raw_value(r: Option<&RawValue>) -> Option<Value> {
    r.and_then(|r| serde_json::from_str(r.get()).ok())
}

impl TriggerRegistry {
    /// Adds (or replaces) a service-provided trigger type.
    /// Bindings of the type, parked or armed at an earlier instance of the same service,
    /// are armed at the new provider (a service recreated at run time keeps its routes).
    pub fn register_builtin_type(&mut self, entry: TriggerTypeEntry) -> Sends {
        let key = (entry.namespace.clone(), entry.id.clone());
        self.types.insert(key.clone(), entry);
        self.replay(&key)
    }

    /// Removes the service-provided type `id` of `worker` (bindings park until a provider
    /// returns).
    pub fn unregister_builtin_type(&mut self, engine: &Core, worker: &str, id: &str) -> Sends {
        let key = (DEFAULT_NS.to_string(), id.to_string());
        match self.types.get(&key) {
            Some(t) if matches!(t.provider, Provider::Builtin(_)) && t.worker == Some(worker) => {
                self.remove_type(engine, &key)
            }
            _ => Sends::new(),
        }
    }

    /// Every trigger type.
    pub fn types(&self) -> Vec<TriggerTypeEntry> {
        self.types.values().cloned().collect()
    }

    /// Every binding, sorted by id.
    pub fn bindings(&self) -> Vec<Binding> {
        let mut v: Vec<_> = self.bindings.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// One binding.
    pub fn binding(&self, id: &str) -> Option<Binding> {
        self.bindings.get(id).cloned()
    }

    /// If the binding is armed by a worker provider, returns a receiver for its answer.
    pub fn expect_ack(
        &mut self,
        id: &str,
    ) -> Option<tokio::sync::oneshot::Receiver<Option<ErrorBody>>> {
        self.remote_provider(id)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.ack_waiters.insert(id.to_string(), tx);
        Some(rx)
    }

    /// Stops waiting for a provider's verdict on a binding.
    pub fn forget_ack(&mut self, id: &str) {
        self.ack_waiters.remove(id);
    }

    /// How many bindings a type serves.
    pub fn instance_count(&self, key: &TypeKey) -> usize {
        self.bindings
            .values()
            .filter(|b| b.provider.as_ref() == Some(key))
            .count()
    }

    /// Whether any binding of `trigger_type` is armed (no copy, unlike [`Self::armed_bindings`]).
    pub fn has_armed(&self, trigger_type: &str) -> bool {
        self.bindings
            .values()
            .any(|b| b.trigger_type == trigger_type && b.provider.is_some())
    }

    /// Every armed binding of a type, with its config (for engine types that filter on it).
    pub fn armed_bindings(&self, trigger_type: &str) -> Vec<Binding> {
        let mut v: Vec<Binding> = self
            .bindings
            .values()
            .filter(|b| b.trigger_type == trigger_type && b.provider.is_some())
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    fn resolve(&self, b: &Binding) -> Option<TypeKey> {
        self.resolve_type(
            &b.trigger_type,
            b.trigger_namespace.as_deref(),
            &b.home_namespace,
        )
    }

    /// The provider a binding of `ty` registered from `home` would be armed at (§3.8):
    /// `trigger_namespace` when given, else the home namespace, then `default`.
    fn resolve_type(&self, ty: &str, trigger_ns: Option<&str>, home: &str) -> Option<TypeKey> {
        if let Some(ns) = trigger_ns {
            let k = (ns.to_string(), ty.to_string());
            return self.types.contains_key(&k).then_some(k);
        }
        let home = (home.to_string(), ty.to_string());
        if self.types.contains_key(&home) {
            return Some(home);
        }
        let dflt = (DEFAULT_NS.to_string(), ty.to_string());
        self.types.contains_key(&dflt).then_some(dflt)
    }

    /// The `trigger_request_format` of the trigger type a binding of `ty` registered from
    /// `home` resolves to now; `None` when the type has none or no provider yet.
    pub fn config_schema(&self, ty: &str, trigger_ns: Option<&str>, home: &str) -> Option<Value> {
        let key = self.resolve_type(ty, trigger_ns, home)?;
        self.types.get(&key)?.trigger_request_format.clone()
    }

    /// The provider key and worker connection binding `id` is armed at, if its provider is
    /// a worker.
    fn remote_provider(&self, id: &str) -> Option<(&TypeKey, &Arc<Conn>)> {
        let key = self.bindings.get(id)?.provider.as_ref()?;
        match &self.types.get(key)?.provider {
            Provider::Remote(c) => Some((key, c)),
            Provider::Builtin(_) => None,
        }
    }

    /// Tells a binding's provider to disarm it.
    fn disarm(&mut self, b: &Binding, sends: &mut Sends) {
        self.unacked.remove(&b.id);
        let Some(key) = &b.provider else { return };
        match self.types.get(key).map(|t| &t.provider) {
            Some(Provider::Builtin(p)) => p.unregister(b),
            Some(Provider::Remote(c)) => {
                sends.push((c.clone(), out::unregister_trigger(&b.id, &b.trigger_type)))
            }
            None => {}
        }
    }

    /// Arms a binding at `key`. Builtin errors are returned; remote providers answer later.
    fn arm(&mut self, b: &Binding, key: &TypeKey, sends: &mut Sends) -> Result<(), String> {
        match self.types.get(key).map(|t| &t.provider) {
            Some(Provider::Builtin(p)) => p.register(b),
            Some(Provider::Remote(c)) => {
                if c.is_closing() {
                    return Err("provider is disconnecting".into());
                }
                sends.push((c.clone(), register_frame(b, key)));
                self.unacked.insert(
                    b.id.clone(),
                    Unacked {
                        conn_id: c.id,
                        sent_at: Instant::now(),
                        resends: 0,
                    },
                );
                Ok(())
            }
            None => Err("no provider".into()),
        }
    }

    fn failure_to_owner(
        &self,
        engine: &Core,
        b: &Binding,
        code: &str,
        message: &str,
        sends: &mut Sends,
    ) {
        if let Some(owner) = b.owner.and_then(|id| engine.conn(id)) {
            let e = ErrorBody::new(code, message);
            sends.push((
                owner,
                out::trigger_registration_result(&b.id, &b.trigger_type, &b.function_id, Some(&e)),
            ));
        }
    }

    /// Adds or replaces a binding. On a synchronous provider error the previous binding with
    /// that id is kept and the error is returned.
    pub fn upsert(&mut self, b: Binding, sends: &mut Sends) -> Result<(), ErrorBody> {
        let old = self.bindings.get(&b.id).cloned();
        // A binding belongs to the connection that registered it: another one cannot take its
        // id over (it would steal the route or the subscription).
        if let Some(old) = &old {
            if old.owner != b.owner {
                return Err(ErrorBody::new(
                    codes::TRIGGER_REGISTRATION_FAILED,
                    format!(
                        "trigger id {} is already registered by another worker; choose another id",
                        b.id
                    ),
                ));
            }
        }
        let mut b = b;
        let key = self.resolve(&b);
        match &key {
            Some(k) => {
                let builtin = matches!(
                    self.types.get(k).map(|t| &t.provider),
                    Some(Provider::Builtin(_))
                );
                if builtin {
                    if let Err(msg) = self.arm(&b, k, sends) {
                        return Err(ErrorBody::new(codes::TRIGGER_REGISTRATION_FAILED, msg));
                    }
                    if let Some(old) = &old {
                        if old.provider.as_ref() != Some(k) {
                            self.disarm(old, sends);
                        }
                    }
                } else {
                    if let Some(old) = &old {
                        if old.provider.as_ref() != Some(k) {
                            self.disarm(old, sends);
                        }
                    }
                    if self.arm(&b, k, sends).is_err() {
                        b.provider = None;
                        tracing::info!(trigger_id = %b.id, trigger_type = %b.trigger_type, "[PENDING] provider disconnecting; binding parked");
                        self.bindings.insert(b.id.clone(), b);
                        return Ok(());
                    }
                }
                b.provider = key.clone();
                tracing::info!(trigger_id = %b.id, trigger_type = %b.trigger_type, function_id = %b.function_id, "[REGISTERED] trigger");
            }
            None => {
                if let Some(old) = &old {
                    self.disarm(old, sends);
                }
                b.provider = None;
                tracing::info!(trigger_id = %b.id, trigger_type = %b.trigger_type, "[PENDING] no provider for this trigger type yet; binding parked until a service or worker registers it");
            }
        }
        self.bindings.insert(b.id.clone(), b);
        Ok(())
    }

    /// Applies a worker's `registertrigger`.
    pub fn register_from_worker(
        &mut self,
        conn: &Arc<Conn>,
        conn_ns: &str,
        f: &Frame<'_>,
    ) -> Sends {
        let mut sends = Sends::new();
        let (Some(id), Some(ty), Some(fid)) = (
            f.id.as_deref(),
            f.trigger_type.as_deref(),
            f.function_id.as_deref(),
        ) else {
            return sends;
        };
        let blank = |s: &Option<std::borrow::Cow<'_, str>>| {
            s.as_deref().is_some_and(|n| n.trim().is_empty())
        };
        if blank(&f.namespace) || blank(&f.trigger_namespace) {
            let e = ErrorBody::new(codes::INVALID_NAMESPACE, "namespace must not be blank");
            sends.push((
                conn.clone(),
                out::trigger_registration_result(id, ty, fid, Some(&e)),
            ));
            return sends;
        }
        let b = Binding {
            id: id.to_string(),
            trigger_type: ty.to_string(),
            function_id: fid.to_string(),
            config: raw_value(f.config).unwrap_or(Value::Null),
            metadata: raw_value(f.metadata),
            owner: Some(conn.id),
            namespace: f.namespace.as_deref().unwrap_or(DEFAULT_NS).to_string(),
            trigger_namespace: f.trigger_namespace.as_deref().map(str::to_string),
            home_namespace: conn_ns.to_string(),
            provider: None,
        };
        if let Err(e) = self.upsert(b, &mut sends) {
            tracing::warn!(trigger_id = id, trigger_type = ty, error = %e.message, "trigger registration failed");
            sends.push((
                conn.clone(),
                out::trigger_registration_result(id, ty, fid, Some(&e)),
            ));
        }
        sends
    }

    /// Removes a binding and disarms it if `by` may: a worker's `unregistertrigger` removes
    /// only its own bindings; `engine::unregister_trigger` (`allow_unowned`) also removes those
    /// `engine::register_trigger` made, which no connection owns. Returns whether it removed.
    pub fn unregister_owned(
        &mut self,
        id: &str,
        by: Option<u128>,
        allow_unowned: bool,
        sends: &mut Sends,
    ) -> bool {
        let allowed = self.bindings.get(id).is_some_and(|b| {
            (b.owner.is_some() && b.owner == by) || (allow_unowned && b.owner.is_none())
        });
        if !allowed {
            if self.bindings.contains_key(id) {
                tracing::warn!(
                    trigger_id = id,
                    "trigger unregistration refused: the trigger belongs to another worker"
                );
            }
            return false;
        }
        sends.extend(self.unregister(id));
        true
    }

    /// Removes a binding and disarms it, whoever owns it (disconnect cleanup).
    pub fn unregister(&mut self, id: &str) -> Sends {
        let mut sends = Sends::new();
        if let Some(b) = self.bindings.remove(id) {
            self.disarm(&b, &mut sends);
            tracing::info!(trigger_id = id, "[UNREGISTERED] trigger");
        }
        sends
    }

    /// Applies a worker's `registertriggertype` and replays the bindings it now serves.
    pub fn register_remote_type(
        &mut self,
        conn: &Arc<Conn>,
        conn_ns: &str,
        f: &Frame<'_>,
    ) -> Sends {
        let mut sends = Sends::new();
        let Some(id) = f.id.as_deref() else {
            return sends;
        };
        let ns = match f.namespace.as_deref() {
            Some(n) if n.trim().is_empty() => {
                tracing::warn!(
                    trigger_type = id,
                    "trigger type registration with a blank namespace refused"
                );
                return sends;
            }
            Some(n) => n.to_string(),
            None => conn_ns.to_string(),
        };
        let key = (ns.clone(), id.to_string());
        // A service's type (`http`, `state`, …) is not up for grabs: taking it over would hand
        // a worker every binding of that type, and its leaving would remove the type.
        if matches!(
            self.types.get(&key).map(|t| &t.provider),
            Some(Provider::Builtin(_))
        ) {
            tracing::warn!(trigger_type = id, namespace = %key.0, worker_id = %conn.id_str, "trigger type registration refused: the engine provides this type");
            return sends;
        }
        let fmt = |r: Option<&RawValue>| raw_value(r);
        let entry = TriggerTypeEntry {
            namespace: ns,
            id: id.into(),
            description: f.description.as_deref().unwrap_or_default().to_string(),
            trigger_request_format: fmt(f.trigger_request_format),
            call_request_format: fmt(f.call_request_format),
            response_format: None,
            provider: Provider::Remote(conn.clone()),
            worker: None,
        };
        self.types.insert(key.clone(), entry);
        tracing::info!(trigger_type = id, namespace = %key.0, worker_id = %conn.id_str, "[REGISTERED] trigger type");
        sends.extend(self.replay(&key));
        sends
    }

    /// Arms at `key` every binding it now serves: ones armed there before (at an earlier
    /// provider of the same key), parked ones that now resolve here, and bindings that fell
    /// back to `default` but whose home namespace is this one (re-home).
    fn replay(&mut self, key: &TypeKey) -> Sends {
        let mut sends = Sends::new();
        let ids: Vec<String> = self.bindings.keys().cloned().collect();
        for bid in ids {
            let b = self.bindings[&bid].clone();
            if b.trigger_type != key.1 {
                continue;
            }
            let target = self.resolve(&b);
            if target.as_ref() != Some(key) {
                continue;
            }
            if let Some(old) = &b.provider {
                if old != key {
                    self.disarm(&b, &mut sends);
                }
            }
            let mut nb = b.clone();
            match self.arm(&nb, key, &mut sends) {
                Ok(()) => nb.provider = Some(key.clone()),
                Err(e) => {
                    tracing::warn!(trigger_id = %nb.id, trigger_type = %key.1, "cannot arm at the returning provider: {e}; binding parked");
                    nb.provider = None
                }
            }
            self.bindings.insert(bid, nb);
        }
        sends
    }

    /// Applies a worker's `unregistertriggertype` (only for a type it registered).
    pub fn unregister_remote_type(
        &mut self,
        engine: &Core,
        conn: &Arc<Conn>,
        conn_ns: &str,
        f: &Frame<'_>,
    ) -> Sends {
        let Some(id) = f.id.as_deref() else {
            return Sends::new();
        };
        let ns = f
            .namespace
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(conn_ns)
            .to_string();
        let key = (ns, id.to_string());
        let owned = matches!(self.types.get(&key).map(|t| &t.provider), Some(Provider::Remote(c)) if c.id == conn.id);
        if !owned {
            return Sends::new();
        }
        self.remove_type(engine, &key)
    }

    /// Removes a type and re-resolves the bindings it served (fallback provider or parked).
    fn remove_type(&mut self, engine: &Core, key: &TypeKey) -> Sends {
        let mut sends = Sends::new();
        self.types.remove(key);
        tracing::info!(trigger_type = %key.1, namespace = %key.0, "[UNREGISTERED] trigger type");
        // The bindings it served, and parked bindings of its type: one parked because this
        // provider was already closing when it arrived now resolves to a fallback provider.
        let ids: Vec<String> = self
            .bindings
            .values()
            .filter(|b| {
                b.provider.as_ref() == Some(key)
                    || (b.provider.is_none() && b.trigger_type == key.1)
            })
            .map(|b| b.id.clone())
            .collect();
        for bid in ids {
            let mut b = self.bindings[&bid].clone();
            let was_parked = b.provider.is_none();
            b.provider = None;
            let target = self.resolve(&b);
            if was_parked && target.is_none() {
                continue;
            }
            match target {
                Some(k) => match self.arm(&b, &k, &mut sends) {
                    Ok(()) => b.provider = Some(k),
                    Err(msg) => {
                        self.failure_to_owner(
                            engine,
                            &b,
                            codes::TRIGGER_REGISTRATION_FAILED,
                            &msg,
                            &mut sends,
                        );
                    }
                },
                None => {
                    tracing::info!(trigger_id = %b.id, trigger_type = %b.trigger_type, "[DISABLED] provider left; binding parked until it returns")
                }
            }
            self.bindings.insert(bid, b);
        }
        sends
    }

    /// Applies a provider's `triggerregistrationresult`.
    pub fn on_registration_result(
        &mut self,
        engine: &Core,
        conn: &Arc<Conn>,
        f: &Frame<'_>,
    ) -> Sends {
        let mut sends = Sends::new();
        let Some(id) = f.id.as_deref() else {
            return sends;
        };
        let Some(b) = self.bindings.get(id).cloned() else {
            return sends;
        };
        if self
            .remote_provider(id)
            .is_none_or(|(_, c)| c.id != conn.id)
        {
            return sends;
        }
        self.unacked.remove(id);
        if let Some(waiter) = self.ack_waiters.remove(id) {
            let _ = waiter.send(f.error.clone());
        }
        if let Some(e) = &f.error {
            tracing::warn!(trigger_id = id, error = %e, "provider rejected the trigger; binding parked");
            let mut nb = b.clone();
            nb.provider = None;
            self.bindings.insert(id.to_string(), nb);
            self.failure_to_owner(engine, &b, &e.code, &e.message, &mut sends);
        }
        sends
    }

    /// Re-resolves everything a closing connection provided or owned.
    pub fn conn_closed(&mut self, engine: &Core, conn: &Arc<Conn>) -> Sends {
        let mut sends = Sends::new();
        let owned: Vec<String> = self
            .bindings
            .values()
            .filter(|b| b.owner == Some(conn.id))
            .map(|b| b.id.clone())
            .collect();
        for id in owned {
            sends.extend(self.unregister(&id));
        }
        let provided: Vec<TypeKey> = self
            .types
            .iter()
            .filter(|(_, t)| matches!(&t.provider, Provider::Remote(c) if c.id == conn.id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in provided {
            sends.extend(self.remove_type(engine, &key));
        }
        // Frames to the departing connection itself are pointless.
        sends.retain(|(c, _)| c.id != conn.id);
        sends
    }

    /// Sends again every `registertrigger` its worker provider has left unanswered for
    /// longer than [`RESEND_AFTER`]; gives up (with a warning) after the last resend.
    pub fn resend_unacked(&mut self, now: Instant) -> Sends {
        let mut sends = Sends::new();
        if self.unacked.is_empty() {
            return sends;
        }
        let due: Vec<String> = self
            .unacked
            .iter()
            .filter(|(_, u)| {
                let wait = RESEND_AFTER
                    .get(u.resends as usize)
                    .copied()
                    .unwrap_or(RESEND_AFTER[RESEND_AFTER.len() - 1]);
                now.saturating_duration_since(u.sent_at) >= wait
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            let Some(u) = self.unacked.remove(&id) else {
                continue;
            };
            // Still armed at the same, live provider connection?
            let (key, conn) = match self.remote_provider(&id) {
                Some((k, c)) if c.id == u.conn_id && !c.is_closing() => (k.clone(), c.clone()),
                _ => continue,
            };
            let b = &self.bindings[&id];
            if u.resends as usize >= RESEND_AFTER.len() {
                tracing::warn!(trigger_id = %id, trigger_type = %b.trigger_type, worker_id = %conn.id_str,
                    "provider never answered registertrigger; giving up resending it");
                continue;
            }
            tracing::info!(trigger_id = %id, trigger_type = %b.trigger_type, worker_id = %conn.id_str,
                attempt = u.resends + 2, "provider has not answered registertrigger; sending it again");
            sends.push((conn, register_frame(b, &key)));
            self.unacked.insert(
                id,
                Unacked {
                    conn_id: u.conn_id,
                    sent_at: now,
                    resends: u.resends + 1,
                },
            );
        }
        sends
    }
}

/// The `registertrigger` frame that arms `b` at the worker provider of `key`.
fn register_frame(b: &Binding, key: &TypeKey) -> String {
    let config = b.config.to_string();
    let metadata = b.metadata.as_ref().map(Value::to_string);
    out::register_trigger(&out::RegisterTrigger {
        id: &b.id,
        trigger_type: &b.trigger_type,
        function_id: &b.function_id,
        config: &config,
        metadata: metadata.as_deref(),
        namespace: (b.namespace != DEFAULT_NS).then_some(b.namespace.as_str()),
        trigger_namespace: (key.0 != DEFAULT_NS).then_some(key.0.as_str()),
    })
}
