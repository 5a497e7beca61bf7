//! The core handle: function registry, invocation router and worker lifecycle.
//!
//! Everything a session, a listener or a service needs goes through [`Core`], a cheap clonable
//! handle. Services register through [`crate::service::Registrar`]; they never see `Inner`.

use iii_protocol::codes;
use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use iii_protocol::{out, ErrorBody, Frame};
use parking_lot::{Mutex, RwLock};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::channels::Channels;
use crate::conn::{Conn, SendError};
use crate::invocation::{InvocationProvider, InvocationTarget};
use crate::limits::{FRAME_TOO_LARGE, TOO_MANY_PENDING_CALLS};
use crate::pending::{CallSlot, Outcome, PendingCall, PendingTable, Take, Waiter};
use crate::reply::Reply;
use crate::triggers::TriggerRegistry;

/// Takes an in-process call's pending entry out when the call ends in any way, including its
/// future being dropped. After a result arrived the entry is gone already and this is a no-op.
struct PendingGuard<'a> {
    table: &'a PendingTable,
    id: u128,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.table.take(self.id, None);
    }
}

/// The namespace of everything that names none.
pub const DEFAULT_NS: &str = iii_protocol::ids::DEFAULT_NAMESPACE;

/// Context of a call into an in-process function.
#[derive(Clone)]
pub struct CallCtx {
    /// The worker connection that made the call, if any.
    pub caller: Option<Arc<Conn>>,
    /// The namespace the call resolved in.
    pub namespace: String,
    /// The function called.
    pub function_id: String,
    /// The call's metadata, if any.
    pub metadata: Option<Value>,
}

impl CallCtx {
    /// The calling session's access policy (PROTOCOL.md §9); `None` for a trusted caller or
    /// an engine-internal call.
    pub fn access(&self) -> Option<&Arc<dyn crate::access::SessionAccess>> {
        self.caller.as_ref().and_then(|c| c.access())
    }

    /// The calling session's payload checks (PROTOCOL.md §3.9); `None` when its listener does
    /// not validate, or for an engine-internal call.
    pub fn validator(&self) -> Option<&Arc<dyn crate::validation::PayloadValidator>> {
        self.caller.as_ref().and_then(|c| c.validator())
    }
}

/// A boxed future, as in-process handlers and service tasks return.
pub type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// An in-process function's handler.
pub type BuiltinFn =
    Arc<dyn Fn(Core, CallCtx, Value) -> BoxFut<Result<Reply, ErrorBody>> + Send + Sync>;

/// Who serves a function.
pub enum Handler {
    /// A worker connection.
    Remote(Arc<Conn>),
    /// An in-process handler.
    Builtin(BuiltinFn),
}

/// A registered function.
pub struct FunctionEntry {
    /// The function id.
    pub id: String,
    /// Its namespace.
    pub namespace: String,
    /// One line for listings.
    pub description: Option<String>,
    /// JSON Schema of its input.
    pub request_format: Option<Value>,
    /// JSON Schema of its result.
    pub response_format: Option<Value>,
    /// Free-form metadata.
    pub metadata: Option<Value>,
    /// Who serves it.
    pub handler: Handler,
    /// For in-process functions: the in-process worker that provides them.
    pub engine_worker: Option<&'static str>,
    /// For an in-process handler the engine runs on a worker's behalf (an HTTP-invoked
    /// function, §3.10): that worker, which owns the function as if it served it.
    pub on_behalf_of: Option<Arc<Conn>>,
    /// Ends that handler's calls in flight when its worker disconnects.
    hosted_stop: Option<tokio_util::sync::CancellationToken>,
    /// See [`FunctionEntry::derived`].
    derived: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl FunctionEntry {
    /// The worker name listings show for it.
    pub fn worker_name(&self) -> String {
        match (&self.handler, self.engine_worker) {
            (_, Some(w)) => w.to_string(),
            (Handler::Remote(c), None) => c.name().unwrap_or_else(|| self.fallback_worker_name()),
            (Handler::Builtin(_), None) => self
                .on_behalf_of
                .as_ref()
                .and_then(|c| c.name())
                .unwrap_or_else(|| self.fallback_worker_name()),
        }
    }

    fn fallback_worker_name(&self) -> String {
        self.id.split("::").next().unwrap_or(&self.id).to_string()
    }

    /// The worker connection that owns it: the one serving it, or the one the engine serves
    /// it for. `None` for the engine's own functions.
    pub fn owner_conn(&self) -> Option<&Arc<Conn>> {
        match &self.handler {
            Handler::Remote(c) => Some(c),
            Handler::Builtin(_) => self.on_behalf_of.as_ref(),
        }
    }

    /// A value computed from this entry once and kept as long as the entry lives (a payload
    /// validator's compiled schemas, [`crate::validation`]), so it goes when the function goes.
    /// The first caller's `init` fills the slot and later callers share it. The slot holds one
    /// type: asked for another, it returns `None`.
    pub fn derived<T: Any + Send + Sync>(
        &self,
        init: impl FnOnce(&FunctionEntry) -> T,
    ) -> Option<&T> {
        self.derived
            .get_or_init(|| Box::new(init(self)))
            .downcast_ref()
    }

    /// `metadata.internal` is true: hidden from listings unless asked.
    pub fn is_internal(&self) -> bool {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("internal"))
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

type FunctionMap = HashMap<String, HashMap<String, Arc<FunctionEntry>>>;

/// Settings of the core itself (not of any service).
#[derive(Debug, Clone, PartialEq)]
pub struct CoreSettings {
    /// How long a new connection may take to declare its namespace before its buffered
    /// registrations are applied in `default` (PROTOCOL.md §2.4).
    pub namespace_grace: Duration,
}

impl Default for CoreSettings {
    fn default() -> Self {
        CoreSettings {
            namespace_grace: Duration::from_millis(5000),
        }
    }
}

pub(crate) struct Inner {
    pub cfg: CoreSettings,
    pub functions: RwLock<FunctionMap>,
    /// Bumped on every change a function listing shows (see [`Core::functions_generation`]).
    pub functions_gen: AtomicU64,
    pub conns: RwLock<HashMap<u128, Arc<Conn>>>,
    /// Live worker names: (namespace, name) → connection id.
    pub names: Mutex<HashMap<(String, String), u128>>,
    pub pending: PendingTable,
    pub triggers: Mutex<TriggerRegistry>,
    pub channels: Channels,
    pub in_process_workers: RwLock<Vec<&'static str>>,
    pub started_ms: u64,
    /// Builds handlers for `registerfunction.invocation` (§3.10), when a service installed one.
    pub invocation_provider: RwLock<Option<InstalledProvider>>,
    /// The observability tap ([`crate::tap`]), once a service installs it.
    pub observer: crate::tap::Slot,
    /// Counters and gauge samplers services report into ([`crate::tap::MetricsRegistry`]).
    pub metrics: crate::tap::MetricsRegistry,
}

/// An HTTP-invoked function's handler as the core registers it.
struct Hosted {
    handler: BuiltinFn,
    verify: Option<BoxFut<Result<(), ErrorBody>>>,
    stop: tokio_util::sync::CancellationToken,
}

/// The installed [`InvocationProvider`] and the in-process worker that installed it.
#[derive(Clone)]
pub(crate) struct InstalledProvider {
    pub provider: Arc<dyn InvocationProvider>,
    pub worker: &'static str,
}

#[derive(Clone)]
/// The core handle; cheap to clone.
pub struct Core {
    pub(crate) inner: Arc<Inner>,
}

/// A [`Core`] handle that does not keep it alive.
#[derive(Clone)]
pub struct WeakCore(std::sync::Weak<Inner>);

impl WeakCore {
    /// The core, if it still exists.
    pub fn upgrade(&self) -> Option<Core> {
        self.0.upgrade().map(|inner| Core { inner })
    }
}

fn not_found_message(id: &str, ns: &str, elsewhere: &[String]) -> String {
    if elsewhere.is_empty() {
        format!("Function {id} not found in namespace {ns}.")
    } else {
        format!(
            "Function {id} not found in namespace {ns}. It is registered in namespace(s): {}.",
            elsewhere.join(", ")
        )
    }
}

/// A fresh random id (a UUID as `u128`).
pub fn new_id() -> u128 {
    uuid::Uuid::new_v4().as_u128()
}

impl Core {
    /// A core with no functions, trigger types or workers; services add them.
    pub fn new(cfg: CoreSettings) -> Core {
        Core {
            inner: Arc::new(Inner {
                cfg,
                functions: RwLock::new(HashMap::new()),
                functions_gen: AtomicU64::new(0),
                conns: RwLock::new(HashMap::new()),
                names: Mutex::new(HashMap::new()),
                pending: PendingTable::default(),
                triggers: Mutex::new(TriggerRegistry::default()),
                channels: Channels::default(),
                in_process_workers: RwLock::new(Vec::new()),
                started_ms: crate::conn::now_ms(),
                invocation_provider: RwLock::new(None),
                observer: crate::tap::Slot::new(),
                metrics: crate::tap::MetricsRegistry::default(),
            }),
        }
    }

    /// A handle that does not keep the core alive (for stores the core's functions own).
    pub fn downgrade(&self) -> WeakCore {
        WeakCore(Arc::downgrade(&self.inner))
    }

    /// The core's own settings.
    pub fn settings(&self) -> &CoreSettings {
        &self.inner.cfg
    }

    /// Installs the observability tap; false when one is already installed (the first stays).
    pub fn set_observer(&self, observer: Arc<dyn crate::tap::Observer>) -> bool {
        self.inner.observer.set(observer).is_ok()
    }

    /// The installed observability tap.
    pub fn observer(&self) -> Option<&Arc<dyn crate::tap::Observer>> {
        self.inner.observer.get()
    }

    /// The metrics registry services report counters and gauges into.
    pub fn metrics(&self) -> &crate::tap::MetricsRegistry {
        &self.inner.metrics
    }

    fn observe(
        &self,
        function_id: &str,
        started: Option<std::time::Instant>,
        err: Option<&ErrorBody>,
        trace: (Option<&str>, Option<&str>),
        caller: Option<u128>,
        builtin: bool,
    ) {
        let (Some(obs), Some(started)) = (self.observer(), started) else {
            return;
        };
        let caller = caller.map(iii_protocol::format_uuid);
        obs.invocation(&crate::tap::InvocationEvent {
            function_id,
            error_code: err.map(|e| e.code.as_str()),
            error_message: err.map(|e| e.message.as_str()),
            duration: started.elapsed(),
            traceparent: trace.0,
            baggage: trace.1,
            caller: caller.as_deref(),
            builtin,
        });
    }

    fn observe_start(&self) -> Option<std::time::Instant> {
        self.observer().map(|_| std::time::Instant::now())
    }

    // ---- functions -------------------------------------------------------------------------

    /// Registers an in-process function of `worker` in `default`.
    pub(crate) fn register_builtin(
        &self,
        worker: &'static str,
        spec: crate::service::FunctionSpec,
    ) {
        let entry = FunctionEntry {
            id: spec.id.clone(),
            namespace: DEFAULT_NS.into(),
            description: Some(spec.description),
            request_format: spec.request_schema,
            response_format: spec.response_schema,
            metadata: spec.metadata,
            handler: Handler::Builtin(spec.handler),
            engine_worker: Some(worker),
            on_behalf_of: None,
            hosted_stop: None,
            derived: OnceLock::new(),
        };
        self.inner
            .functions
            .write()
            .entry(DEFAULT_NS.into())
            .or_default()
            .insert(spec.id, Arc::new(entry));
        self.functions_changed();
    }

    /// A number that changes whenever a function is added or removed or a worker names itself
    /// (a listing shows worker names): equal numbers mean an unchanged listing, so listings can
    /// be cached against it.
    pub fn functions_generation(&self) -> u64 {
        self.inner.functions_gen.load(Ordering::Acquire)
    }

    fn functions_changed(&self) {
        self.inner.functions_gen.fetch_add(1, Ordering::AcqRel);
    }

    /// The function `id` in namespace `ns`.
    pub fn lookup(&self, ns: &str, id: &str) -> Option<Arc<FunctionEntry>> {
        self.inner.functions.read().get(ns)?.get(id).cloned()
    }

    /// Namespaces other than `ns` where `id` is registered (for the not-found hint).
    fn namespaces_with(&self, id: &str, ns: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .functions
            .read()
            .iter()
            .filter(|(n, m)| n.as_str() != ns && m.contains_key(id))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Every function, sorted by id then namespace.
    pub fn all_functions(&self) -> Vec<Arc<FunctionEntry>> {
        let f = self.inner.functions.read();
        let mut v: Vec<_> = f.values().flat_map(|m| m.values().cloned()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id).then(a.namespace.cmp(&b.namespace)));
        v
    }

    /// Installs the provider that serves `registerfunction.invocation` (§3.10); a later one
    /// replaces it.
    pub(crate) fn set_invocation_provider(
        &self,
        worker: &'static str,
        provider: Arc<dyn InvocationProvider>,
    ) {
        *self.inner.invocation_provider.write() = Some(InstalledProvider { provider, worker });
    }

    /// Applies a `registerfunction` from a worker into its namespace.
    pub(crate) async fn register_remote_function(&self, conn: &Arc<Conn>, ns: &str, f: &Frame<'_>) {
        let Some(id) = f.id.as_deref() else { return };
        if ns != DEFAULT_NS && id.starts_with(iii_protocol::ids::ENGINE_PREFIX) {
            let _ = conn.send(out::function_conflict(ns, id, "")).await;
            return;
        }
        // An HTTP-invoked function: the engine serves it, on this worker's behalf.
        let mut verify = None;
        let (handler, on_behalf_of, hosted_stop) = match f.invocation {
            None => (Handler::Remote(conn.clone()), None, None),
            Some(raw) => match self.build_hosted(conn, ns, id, raw.get()) {
                Ok(h) => {
                    verify = h.verify;
                    (
                        Handler::Builtin(h.handler),
                        Some(conn.clone()),
                        Some(h.stop),
                    )
                }
                Err(e) => {
                    tracing::warn!(function_id = id, namespace = ns, worker_id = %conn.id_str, error = %e, "HTTP-invoked function registration refused");
                    let _ = conn.send(out::function_refused(ns, id, &e)).await;
                    return;
                }
            },
        };
        let parse =
            |r: Option<&RawValue>| r.and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
        let entry = Arc::new(FunctionEntry {
            id: id.to_string(),
            namespace: ns.to_string(),
            description: f.description.as_deref().map(str::to_string),
            request_format: parse(f.request_format),
            response_format: parse(f.response_format),
            metadata: parse(f.metadata),
            handler,
            engine_worker: None,
            on_behalf_of,
            hosted_stop,
            derived: OnceLock::new(),
        });
        let conflict = {
            let mut map = self.inner.functions.write();
            let slot = map.entry(ns.to_string()).or_default();
            let conflict = match slot.get(id).map(|e| e.owner_conn()) {
                None => None,
                // Core-owned ids cannot be shadowed: a worker leaving must not take a builtin with it.
                Some(None) => Some(String::new()),
                Some(Some(owner)) if owner.id != conn.id && !owner.is_closing() => {
                    Some(owner.id_str.clone())
                }
                Some(Some(_)) => None,
            };
            if conflict.is_none() {
                slot.insert(id.to_string(), entry.clone());
            }
            conflict
        };
        match conflict {
            Some(owner) => {
                tracing::warn!(function_id = id, namespace = ns, owner = %owner, "function registration rejected: id already owned");
                let _ = conn.send(out::function_conflict(ns, id, &owner)).await;
            }
            None => {
                self.functions_changed();
                let kind = if entry.on_behalf_of.is_some() {
                    "HTTP-invoked function"
                } else {
                    "function"
                };
                tracing::info!(function_id = id, namespace = ns, worker_id = %conn.id_str, "[REGISTERED] {kind}");
                if let Some(check) = verify {
                    self.verify_hosted(conn, entry, check);
                }
            }
        }
    }

    /// Asks the installed provider for the handler of an HTTP-invoked function, wrapped so its
    /// calls end with `invocation_stopped` when the worker disconnects.
    fn build_hosted(
        &self,
        conn: &Arc<Conn>,
        ns: &str,
        id: &str,
        invocation: &str,
    ) -> Result<Hosted, ErrorBody> {
        let Some(installed) = self.inner.invocation_provider.read().clone() else {
            return Err(ErrorBody::new(
                codes::HTTP_FUNCTIONS_UNAVAILABLE,
                format!("`{id}` is an HTTP-invoked function (it has `invocation`), and this engine does not serve those: add `- name: iii-http-functions` to `workers:` in config.yaml"),
            ));
        };
        let value: Value = serde_json::from_str(invocation).map_err(|e| {
            ErrorBody::new(
                codes::INVALID_INVOCATION,
                format!("`invocation` of `{id}` is not JSON: {e}"),
            )
        })?;
        let target = InvocationTarget {
            function_id: id,
            namespace: ns,
            worker_id: &conn.id_str,
        };
        let built = installed.provider.build(target, &value)?;
        let stop = tokio_util::sync::CancellationToken::new();
        let (inner, token) = (built.handler, stop.clone());
        let func: BuiltinFn = Arc::new(move |core, ctx, data| {
            let call = inner(core, ctx, data);
            let token = token.clone();
            Box::pin(async move {
                tokio::select! {
                    r = call => r,
                    _ = token.cancelled() => Err(stopped()),
                }
            })
        });
        tracing::debug!(
            function_id = id,
            provider = installed.worker,
            "HTTP-invoked function built"
        );
        Ok(Hosted {
            handler: func,
            verify: built.verify,
            stop,
        })
    }

    /// Runs a hosted function's I/O check off the worker's read loop; a failure withdraws the
    /// registration, if `entry` is still the one registered, and tells the worker why.
    fn verify_hosted(
        &self,
        conn: &Arc<Conn>,
        entry: Arc<FunctionEntry>,
        check: BoxFut<Result<(), ErrorBody>>,
    ) {
        let (core, conn) = (self.clone(), conn.clone());
        tokio::spawn(async move {
            let Err(e) = check.await else { return };
            let removed = {
                let mut map = core.inner.functions.write();
                match map.get_mut(&entry.namespace) {
                    Some(slot) if slot.get(&entry.id).is_some_and(|e| Arc::ptr_eq(e, &entry)) => {
                        slot.remove(&entry.id);
                        true
                    }
                    _ => false,
                }
            };
            if removed {
                core.functions_changed();
                if let Some(stop) = &entry.hosted_stop {
                    stop.cancel();
                }
                tracing::warn!(function_id = %entry.id, namespace = %entry.namespace, worker_id = %conn.id_str, error = %e, "HTTP-invoked function registration withdrawn");
                let _ = conn
                    .send(out::function_refused(&entry.namespace, &entry.id, &e))
                    .await;
            }
        });
    }

    pub(crate) fn unregister_remote_function(&self, conn: &Arc<Conn>, ns: &str, id: &str) {
        let mut map = self.inner.functions.write();
        if let Some(slot) = map.get_mut(ns) {
            if slot
                .get(id)
                .and_then(|e| e.owner_conn())
                .is_some_and(|c| c.id == conn.id)
            {
                slot.remove(id);
                self.functions_changed();
                tracing::info!(function_id = id, namespace = ns, "[UNREGISTERED] function");
            }
        }
    }

    // ---- invocation ------------------------------------------------------------------------

    /// Routes an `invokefunction` received from a worker.
    pub(crate) async fn invoke_from_worker(&self, conn: &Arc<Conn>, f: Frame<'_>) {
        let fid = f.function_id.as_deref().unwrap_or_default();
        let invocation_id = f.invocation_id.as_deref();
        let is_void =
            matches!(f.action, Some(iii_protocol::Action::Void)) || invocation_id.is_none();
        let ns = f.namespace.as_deref().unwrap_or(DEFAULT_NS);
        let reply_to = if matches!(f.action, Some(iii_protocol::Action::Void)) {
            None
        } else {
            invocation_id
        };

        let reply = |outcome: Result<Option<&str>, &ErrorBody>| {
            reply_to.map(|id| {
                out::invocation_result(
                    id,
                    fid,
                    outcome,
                    f.traceparent.as_deref(),
                    f.baggage.as_deref(),
                )
            })
        };

        if ns.trim().is_empty() {
            let e = ErrorBody::new(codes::INVALID_NAMESPACE, "namespace must not be blank");
            if let Some(fr) = reply(Err(&e)) {
                let _ = conn.send(fr).await;
            }
            return;
        }

        if let Some(access) = conn.access() {
            if let Err(e) = access.may_call(self, fid, ns) {
                // Sent even for `void`, under a generated id when the call has none (§9.4).
                let id = invocation_id
                    .map(str::to_string)
                    .unwrap_or_else(|| iii_protocol::format_uuid(new_id()));
                let _ = conn
                    .send(out::invocation_result(
                        &id,
                        fid,
                        Err(&e),
                        f.traceparent.as_deref(),
                        f.baggage.as_deref(),
                    ))
                    .await;
                return;
            }
            if let Some((middleware, context)) = access.middleware() {
                let engine_owned = fid.starts_with(iii_protocol::ids::ENGINE_PREFIX)
                    && self
                        .lookup(ns, fid)
                        .is_some_and(|e| e.owner_conn().is_none());
                if !engine_owned {
                    // The payload is the session's, whoever forwards it: checked before the
                    // middleware sees it.
                    if let Err(e) = self.check_call_by_id(conn, ns, fid, &f) {
                        if let Some(fr) = reply(Err(&e)) {
                            let _ = conn.send(fr).await;
                        }
                        return;
                    }
                    self.through_middleware(conn, &f, middleware, context, ns);
                    return;
                }
            }
        }

        if let Some(iii_protocol::Action::Enqueue { queue }) = &f.action {
            if let Err(e) = self.check_call_by_id(conn, ns, fid, &f) {
                if let Some(fr) = reply(Err(&e)) {
                    let _ = conn.send(fr).await;
                }
                return;
            }
            self.enqueue_from_worker(conn, &f, queue, ns).await;
            return;
        }

        let Some(entry) = self.lookup(ns, fid) else {
            let e = ErrorBody::new(
                codes::FUNCTION_NOT_FOUND,
                not_found_message(fid, ns, &self.namespaces_with(fid, ns)),
            );
            if let Some(fr) = reply(Err(&e)) {
                let _ = conn.send(fr).await;
            }
            return;
        };

        if let Err(e) = check_call(conn, &entry, &f) {
            if let Some(fr) = reply(Err(&e)) {
                let _ = conn.send(fr).await;
            }
            return;
        }
        let check = result_check(conn, &entry);

        match &entry.handler {
            Handler::Remote(target) => {
                let id = match invocation_id {
                    Some(s) => {
                        iii_protocol::parse_uuid("invocation_id", s).unwrap_or_else(|_| new_id())
                    }
                    None => new_id(),
                };
                let fn_arc: Arc<str> = Arc::from(fid);
                let waiter = match reply_to {
                    Some(_) => Waiter::Conn {
                        conn: conn.clone(),
                        function_id: fn_arc,
                        traceparent: f.traceparent.as_deref().map(str::to_string),
                        baggage: f.baggage.as_deref().map(str::to_string),
                        check,
                    },
                    None => Waiter::Discard {
                        function_id: fn_arc,
                    },
                };
                let Some(slots) = call_slots(Some(conn), target) else {
                    let e = too_many_calls(conn, target);
                    if let Some(fr) = reply(Err(&e)) {
                        let _ = conn.send(fr).await;
                    }
                    return;
                };
                // Record before forwarding: the reply may come back before `send` returns.
                if !self.inner.pending.insert(
                    id,
                    PendingCall {
                        slots,
                        waiter,
                        caller: Some(conn.id),
                        target: target.id,
                        started: self.observe_start(),
                    },
                ) {
                    let e = ErrorBody::new(
                        codes::INVOCATION_ERROR,
                        "an invocation with this invocation_id is already in flight",
                    );
                    if let Some(fr) = reply(Err(&e)) {
                        let _ = conn.send(fr).await;
                    }
                    return;
                }
                // The callee's cleanup may have drained its calls between the lookup above and
                // the insert: it marks the connection closing first, so this catches it.
                if target.is_closing() {
                    if let Take::Found(call) = self.inner.pending.take(id, None) {
                        self.resolve(id, call, Err(stopped())).await;
                    }
                    return;
                }
                let data = f.data.map(RawValue::get).unwrap_or("null");
                let data = iii_protocol::inject_caller_worker_id(data, &conn.id_str);
                let id_owned;
                let id_str = match invocation_id {
                    Some(s) if !is_void => s,
                    _ => {
                        id_owned = iii_protocol::format_uuid(id);
                        &id_owned
                    }
                };
                let frame = out::invoke_function(&out::Invoke {
                    invocation_id: id_str,
                    function_id: crate::access::unprefixed(target.access(), fid),
                    data: &data,
                    metadata: f.metadata.map(RawValue::get),
                    traceparent: f.traceparent.as_deref(),
                    baggage: f.baggage.as_deref(),
                });
                if let Err(e) = target.send(frame).await {
                    if let Take::Found(call) = self.inner.pending.take(id, None) {
                        self.resolve(id, call, Err(send_failed(&e))).await;
                    }
                }
            }
            Handler::Builtin(func) => {
                let func = func.clone();
                let data: Value = match f.data.map(|d| serde_json::from_str(d.get())) {
                    None => Value::Null,
                    Some(Ok(v)) => v,
                    Some(Err(e)) => {
                        let e = ErrorBody::new(
                            codes::DESERIALIZATION_ERROR,
                            format!("Failed to deserialize input for {fid}: {e}"),
                        );
                        if let Some(fr) = reply(Err(&e)) {
                            let _ = conn.send(fr).await;
                        }
                        return;
                    }
                };
                let ctx = CallCtx {
                    caller: Some(conn.clone()),
                    namespace: ns.to_string(),
                    function_id: fid.to_string(),
                    metadata: f.metadata.and_then(|m| serde_json::from_str(m.get()).ok()),
                };
                let reply_id = reply_to.map(str::to_string);
                let tp = f.traceparent.as_deref().map(str::to_string);
                let bg = f.baggage.as_deref().map(str::to_string);
                let conn = conn.clone();
                let engine = self.clone();
                let started = self.observe_start();
                tokio::spawn(async move {
                    let res = func(engine.clone(), ctx.clone(), data).await;
                    engine.observe(
                        &ctx.function_id,
                        started,
                        res.as_ref().err(),
                        (tp.as_deref(), bg.as_deref()),
                        Some(conn.id),
                        true,
                    );
                    match (&res, reply_id) {
                        (_, Some(id)) => {
                            let text = res.as_ref().ok().and_then(Reply::json_text);
                            if let (Some(entry), Ok(_)) = (&check, &res) {
                                checked_result(&conn, entry, text.as_deref());
                            }
                            let outcome = match &res {
                                Ok(_) => Ok(text.as_deref()),
                                Err(e) => Err(e),
                            };
                            send_result(
                                &conn,
                                &id,
                                &ctx.function_id,
                                outcome,
                                tp.as_deref(),
                                bg.as_deref(),
                            );
                        }
                        (Err(e), None) => {
                            tracing::warn!(function_id = %ctx.function_id, error = %e, "fire-and-forget call failed")
                        }
                        _ => {}
                    }
                });
            }
        }
    }

    /// [`check_call`] for a call that is not routed here (middleware, enqueue): the target is
    /// looked up only when the session validates; a target not registered now is not checked.
    fn check_call_by_id(
        &self,
        conn: &Conn,
        ns: &str,
        fid: &str,
        f: &Frame<'_>,
    ) -> Result<(), ErrorBody> {
        if conn.validator().is_none() {
            return Ok(());
        }
        match self.lookup(ns, fid) {
            Some(entry) => check_call(conn, &entry, f),
            None => Ok(()),
        }
    }

    /// Hands a call to the session's middleware instead of routing it (PROTOCOL.md §9.5): the
    /// middleware gets the call and the auth context, and whatever it answers is the caller's
    /// result, sent even for `void`.
    fn through_middleware(
        &self,
        conn: &Arc<Conn>,
        f: &Frame<'_>,
        middleware: &str,
        context: &Value,
        ns: &str,
    ) {
        let fid = f.function_id.as_deref().unwrap_or_default().to_string();
        let payload: Value = f
            .data
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or(Value::Null);
        let action = f
            .action
            .as_ref()
            .and_then(|a| serde_json::to_value(a).ok())
            .unwrap_or(Value::Null);
        let input = json!({
            "function_id": fid,
            "payload": payload,
            "action": action,
            "context": context,
            "namespace": ns,
        })
        .to_string();
        let id = f
            .invocation_id
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| iii_protocol::format_uuid(new_id()));
        let metadata = f.metadata.map(|m| m.get().to_string());
        let tp = f.traceparent.as_deref().map(str::to_string);
        let bg = f.baggage.as_deref().map(str::to_string);
        let (engine, conn) = (self.clone(), conn.clone());
        let (middleware, ns) = (middleware.to_string(), ns.to_string());
        tokio::spawn(async move {
            let res = engine
                .call_inner(
                    &ns,
                    &middleware,
                    &input,
                    metadata.as_deref(),
                    Some(&conn),
                    false,
                )
                .await;
            let text = res.as_ref().ok().and_then(|r| r.as_ref().map(|r| r.get()));
            let outcome = match &res {
                Ok(_) => Ok(text),
                Err(e) => Err(e),
            };
            send_result(&conn, &id, &fid, outcome, tp.as_deref(), bg.as_deref());
        });
    }

    async fn enqueue_from_worker(&self, conn: &Arc<Conn>, f: &Frame<'_>, queue: &str, ns: &str) {
        let fid = f.function_id.as_deref().unwrap_or_default();
        let receipt = iii_protocol::format_uuid(new_id());
        let payload = out::EnqueueRequest {
            queue,
            function_id: fid,
            data: f
                .data
                .and_then(|d| serde_json::from_str::<Value>(d.get()).ok())
                .unwrap_or(Value::Null),
            receipt: &receipt,
            traceparent: f.traceparent.as_deref(),
            baggage: f.baggage.as_deref(),
            namespace: (ns != DEFAULT_NS).then_some(ns),
        }
        .to_json();
        let fid = fid.to_string();
        let reply_to = f.invocation_id.as_deref().map(str::to_string);
        let tp = f.traceparent.as_deref().map(str::to_string);
        let bg = f.baggage.as_deref().map(str::to_string);
        let (engine, conn) = (self.clone(), conn.clone());
        // Off the read loop: the queue provider may be slow, and the caller's other frames
        // must not wait behind it.
        tokio::spawn(async move {
            let res = engine.enqueue(payload, &receipt).await;
            if let Some(id) = reply_to {
                let outcome = match &res {
                    Ok(r) => Ok(Some(r.as_str())),
                    Err(e) => Err(e),
                };
                send_result(&conn, &id, &fid, outcome, tp.as_deref(), bg.as_deref());
            }
        });
    }

    async fn enqueue(&self, payload: Value, receipt: &str) -> Result<String, ErrorBody> {
        if self
            .lookup(DEFAULT_NS, iii_protocol::ids::functions::QUEUE_ENQUEUE)
            .is_none()
        {
            return Err(ErrorBody::new(codes::ENQUEUE_ERROR, "No queue provider is installed. `TriggerAction::Enqueue` routes through the `engine::queue::enqueue` provider, and no worker provides it; start a queue worker that registers it."));
        }
        match self
            .call(
                DEFAULT_NS,
                iii_protocol::ids::functions::QUEUE_ENQUEUE,
                &payload.to_string(),
                None,
                None,
            )
            .await
        {
            Ok(_) => Ok(json!({ "messageReceiptId": receipt }).to_string()),
            Err(e) => Err(ErrorBody::new(codes::ENQUEUE_ERROR, e.message)),
        }
    }

    /// Calls a function from inside the engine (HTTP trigger, trigger fire, builtin).
    /// There is no engine timeout: the call ends when the target answers or disconnects.
    /// With a `caller`, the call counts against its in-flight limit and names it in the data
    /// (`_caller_worker_id`).
    pub async fn call(
        &self,
        ns: &str,
        function_id: &str,
        data: &str,
        metadata: Option<&str>,
        caller: Option<&Arc<Conn>>,
    ) -> Outcome {
        let started = self.observe_start();
        let out = self
            .call_inner(ns, function_id, data, metadata, caller, true)
            .await;
        if started.is_some() {
            let builtin = self
                .lookup(ns, function_id)
                .is_some_and(|e| matches!(e.handler, Handler::Builtin(_)));
            self.observe(
                function_id,
                started,
                out.as_ref().err(),
                (None, None),
                caller.map(|c| c.id),
                builtin,
            );
        }
        out
    }

    /// [`Core::call`]; `name_caller` false keeps the data as given (the middleware input of
    /// PROTOCOL.md §9.5 is exactly its five keys) while the call still counts for the caller.
    async fn call_inner(
        &self,
        ns: &str,
        function_id: &str,
        data: &str,
        metadata: Option<&str>,
        caller: Option<&Arc<Conn>>,
        name_caller: bool,
    ) -> Outcome {
        let Some(entry) = self.lookup(ns, function_id) else {
            return Err(ErrorBody::new(
                codes::FUNCTION_NOT_FOUND,
                format!("Function {function_id} not found in namespace {ns}"),
            ));
        };
        match &entry.handler {
            Handler::Remote(target) => {
                let id = new_id();
                let (tx, rx) = oneshot::channel();
                let Some(slots) = call_slots(caller, target) else {
                    return Err(match caller {
                        Some(c) => too_many_calls(c, target),
                        None => too_many_calls(target, target),
                    });
                };
                if !self.inner.pending.insert(
                    id,
                    PendingCall {
                        slots,
                        waiter: Waiter::Oneshot(tx),
                        caller: caller.map(|c| c.id),
                        target: target.id,
                        started: None,
                    },
                ) {
                    return Err(ErrorBody::new(
                        codes::INVOCATION_ERROR,
                        "invocation id collision",
                    ));
                }
                // A caller that stops waiting (an HTTP request that timed out, a client that went
                // away) drops this future; the guard takes the entry out then, so abandoned calls
                // do not pile up while the callee stays connected.
                let guard = PendingGuard {
                    table: &self.inner.pending,
                    id,
                };
                // As in `invoke_from_worker`: a callee whose cleanup already drained its calls.
                if target.is_closing() {
                    return Err(stopped());
                }
                let data = match caller.filter(|_| name_caller) {
                    Some(c) => iii_protocol::inject_caller_worker_id(data, &c.id_str),
                    None => std::borrow::Cow::Borrowed(data),
                };
                let frame = out::invoke_function(&out::Invoke {
                    invocation_id: &iii_protocol::format_uuid(id),
                    function_id: crate::access::unprefixed(target.access(), function_id),
                    data: &data,
                    metadata,
                    traceparent: None,
                    baggage: None,
                });
                if let Err(e) = target.send(frame).await {
                    return Err(send_failed(&e));
                }
                let outcome = rx.await.unwrap_or_else(|_| Err(stopped()));
                drop(guard);
                outcome
            }
            Handler::Builtin(func) => {
                let value: Value = serde_json::from_str(data).map_err(|e| {
                    ErrorBody::new(
                        codes::DESERIALIZATION_ERROR,
                        format!("Failed to deserialize input for {function_id}: {e}"),
                    )
                })?;
                let ctx = CallCtx {
                    caller: caller.cloned(),
                    namespace: ns.to_string(),
                    function_id: function_id.to_string(),
                    metadata: metadata.and_then(|m| serde_json::from_str(m).ok()),
                };
                let reply = func(self.clone(), ctx, value).await?;
                Ok(reply
                    .json_text()
                    .and_then(|t| RawValue::from_string(t.into_owned()).ok()))
            }
        }
    }

    /// Fire-and-forget call from inside the engine: errors are logged.
    pub fn call_void(
        &self,
        ns: String,
        function_id: String,
        data: String,
        metadata: Option<String>,
    ) {
        let engine = self.clone();
        tokio::spawn(async move {
            if let Err(e) = engine
                .call(&ns, &function_id, &data, metadata.as_deref(), None)
                .await
            {
                tracing::warn!(function_id = %function_id, error = %e, "trigger call failed");
            }
        });
    }

    /// Applies an `invocationresult` from a worker.
    pub(crate) async fn on_result(&self, conn: &Arc<Conn>, f: Frame<'_>) {
        let Some(id_str) = f.invocation_id.as_deref() else {
            return;
        };
        let Ok(id) = iii_protocol::parse_uuid("invocation_id", id_str) else {
            return;
        };
        match self.inner.pending.take(id, Some(conn.id)) {
            Take::Found(call) => {
                let outcome: Result<Option<&RawValue>, ErrorBody> = match f.error {
                    Some(e) => Err(e),
                    None => Ok(f.result),
                };
                self.observe_pending(&call, outcome.as_ref().err());
                match call.waiter {
                    Waiter::Conn {
                        conn: caller,
                        function_id,
                        traceparent,
                        baggage,
                        check,
                    } => {
                        let outcome = match &outcome {
                            Ok(r) => Ok(r.map(RawValue::get)),
                            Err(e) => Err(e),
                        };
                        if let (Some(entry), Ok(result)) = (&check, &outcome) {
                            checked_result(&caller, entry, *result);
                        }
                        send_result(
                            &caller,
                            id_str,
                            &function_id,
                            outcome,
                            traceparent.as_deref(),
                            baggage.as_deref(),
                        );
                    }
                    Waiter::Oneshot(tx) => {
                        let _ = tx.send(outcome.map(|r| r.map(RawValue::to_owned)));
                    }
                    Waiter::Discard { function_id } => {
                        if let Err(e) = outcome {
                            tracing::warn!(function_id = %function_id, error = %e, "fire-and-forget call failed");
                        }
                    }
                }
            }
            Take::Unknown => tracing::debug!(
                invocation_id = id_str,
                "result for an unknown or finished invocation ignored"
            ),
            Take::WrongSender => {
                tracing::warn!(invocation_id = id_str, worker_id = %conn.id_str, "result ignored: this worker is not serving that invocation")
            }
        }
    }

    /// Reports a worker-routed call leaving the table (in-process callers report in [`Core::call`]).
    fn observe_pending(&self, call: &PendingCall, err: Option<&ErrorBody>) {
        if call.started.is_none() {
            return;
        }
        let (fid, trace) = match &call.waiter {
            Waiter::Conn {
                function_id,
                traceparent,
                baggage,
                ..
            } => (function_id, (traceparent.as_deref(), baggage.as_deref())),
            Waiter::Discard { function_id } => (function_id, (None, None)),
            Waiter::Oneshot(_) => return,
        };
        self.observe(fid, call.started, err, trace, call.caller, false);
    }

    async fn resolve(&self, id: u128, call: PendingCall, outcome: Result<(), ErrorBody>) {
        let err = match outcome {
            Ok(()) => return,
            Err(e) => e,
        };
        self.observe_pending(&call, Some(&err));
        match call.waiter {
            Waiter::Conn {
                conn,
                function_id,
                traceparent,
                baggage,
                ..
            } => {
                let frame = out::invocation_result(
                    &iii_protocol::format_uuid(id),
                    &function_id,
                    Err(&err),
                    traceparent.as_deref(),
                    baggage.as_deref(),
                );
                let _ = conn.send(frame).await;
            }
            Waiter::Oneshot(tx) => {
                let _ = tx.send(Err(err));
            }
            Waiter::Discard { .. } => {}
        }
    }

    // ---- connections ------------------------------------------------------------------------

    pub(crate) fn add_conn(&self, conn: Arc<Conn>) {
        self.inner.conns.write().insert(conn.id, conn);
    }

    /// A live connection by id.
    pub fn conn(&self, id: u128) -> Option<Arc<Conn>> {
        self.inner.conns.read().get(&id).cloned()
    }

    /// Every live connection, oldest first.
    pub fn conns(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<_> = self.inner.conns.read().values().cloned().collect();
        v.sort_by_key(|c| c.connected_at_ms);
        v
    }

    /// Calls in flight that `conn` made or serves.
    pub fn active_invocations(&self, conn: u128) -> usize {
        self.inner.pending.active_for(conn)
    }

    /// Tears a connection down (PROTOCOL.md §3.6). Runs once; later callers return at once.
    pub(crate) async fn cleanup_conn(&self, conn: &Arc<Conn>) {
        if !conn.begin_cleanup() {
            return;
        }
        conn.mark_closing();
        // 1. Stop namespace resolution: buffered registrations are discarded.
        conn.state.lock().buffer.clear();
        // 2. Release its functions; calls in flight to the ones the engine serves for it stop.
        {
            let mut map = self.inner.functions.write();
            for slot in map.values_mut() {
                slot.retain(|_, e| {
                    let owned = e.owner_conn().is_some_and(|c| c.id == conn.id);
                    if let (true, Some(stop)) = (owned, &e.hosted_stop) {
                        stop.cancel();
                    }
                    !owned
                });
            }
            map.retain(|_, slot| !slot.is_empty());
        }
        self.functions_changed();
        // 3. Halt every call it made or serves.
        for (id, call) in self.inner.pending.drain_conn(conn.id) {
            let to_self = matches!(&call.waiter, Waiter::Conn { conn: c, .. } if c.id == conn.id);
            if !to_self {
                self.resolve(id, call, Err(stopped())).await;
            }
        }
        // 4-5. Its triggers and trigger types.
        let sends = self.inner.triggers.lock().conn_closed(self, conn);
        crate::triggers::deliver(sends).await;
        // 6. Channels it owns, its name lease, its record.
        self.inner.names.lock().retain(|_, id| *id != conn.id);
        self.inner.conns.write().remove(&conn.id);
        conn.finish_cleanup();
        // A client that never declared itself nor registered anything (a one-shot `iii trigger`)
        // leaves at debug, like its connect.
        if conn.namespace().is_some() {
            tracing::info!(worker_id = %conn.id_str, "worker disconnected");
        } else {
            tracing::debug!(worker_id = %conn.id_str, "worker disconnected");
        }
        // 7.
        self.fire_workers_available("worker_disconnected", &conn.id_str);
    }

    pub(crate) fn fire_workers_available(&self, event: &str, worker_id: &str) {
        let payload = json!({ "event": event, "worker_id": worker_id });
        self.fire(
            iii_protocol::ids::trigger_types::WORKERS_AVAILABLE,
            payload,
            |_| true,
        );
    }

    /// Calls the condition function `cond` with `data` (PROTOCOL.md §4.5): `Ok(false)` when it
    /// answered exactly `false` (the trigger is skipped), `Ok(true)` for any other answer; a
    /// failed call is the error, which each caller handles its own way.
    pub async fn condition(
        &self,
        ns: &str,
        cond: &str,
        data: &str,
        metadata: Option<&str>,
    ) -> Result<bool, ErrorBody> {
        let r = self.call(ns, cond, data, metadata, None).await?;
        Ok(r.is_none_or(|r| r.get().trim() != "false"))
    }

    /// Runs every armed binding of `trigger_type` whose config `matches`, one after another,
    /// honouring `condition_function_id` (PROTOCOL.md §4.5: exactly `false` skips, an error
    /// skips). Failures are logged.
    pub async fn fire_matching(
        &self,
        trigger_type: &str,
        payload: &Value,
        matches: impl Fn(&Value) -> bool,
    ) {
        let bindings = self.inner.triggers.lock().armed_bindings(trigger_type);
        if bindings.is_empty() {
            return;
        }
        let text = payload.to_string();
        for b in bindings.iter().filter(|b| matches(&b.config)) {
            let meta = b.metadata.as_ref().map(Value::to_string);
            if let Some(cond) = b
                .config
                .get("condition_function_id")
                .and_then(Value::as_str)
            {
                match self
                    .condition(&b.namespace, cond, &text, meta.as_deref())
                    .await
                {
                    Ok(false) => continue,
                    Ok(true) => {}
                    Err(e) => {
                        tracing::warn!(trigger_id = %b.id, condition = cond, error = %e, "condition function failed; trigger skipped");
                        continue;
                    }
                }
            }
            if let Err(e) = self
                .call(&b.namespace, &b.function_id, &text, meta.as_deref(), None)
                .await
            {
                tracing::warn!(trigger_id = %b.id, function_id = %b.function_id, error = %e, "trigger handler failed");
            }
        }
    }

    /// [`Core::fire_matching`] on a background task: the one way services and the core fire
    /// trigger types they provide.
    pub fn fire(
        &self,
        trigger_type: &str,
        payload: Value,
        matches: impl Fn(&Value) -> bool + Send + Sync + 'static,
    ) {
        // Most writes have no binding: answer that without copying the bindings.
        if !self.inner.triggers.lock().has_armed(trigger_type) {
            return;
        }
        let (core, ty) = (self.clone(), trigger_type.to_string());
        tokio::spawn(async move { core.fire_matching(&ty, &payload, matches).await });
    }

    /// The trigger registry. The guard is not `Send`, so it cannot be held across an await.
    pub fn triggers(&self) -> parking_lot::MutexGuard<'_, crate::triggers::TriggerRegistry> {
        self.inner.triggers.lock()
    }

    /// The core's own background work until `stop`: unused channels are swept every second,
    /// and worker providers that left a `registertrigger` unanswered get it again.
    pub async fn run_maintenance(self, stop: tokio_util::sync::CancellationToken) {
        let mut resend = tokio::time::interval(Duration::from_millis(250));
        resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every second: listeners may shorten the reclaim timeout after this starts.
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweep.tick() => { self.channels().sweep(); }
                _ = resend.tick() => {
                    let sends = self.triggers().resend_unacked(std::time::Instant::now());
                    crate::triggers::deliver(sends).await;
                }
            }
        }
    }

    /// Applies `engine::workers::register` for a connection (PROTOCOL.md §2.4, §3.8). Returns the result
    /// JSON, or an error; closes the connection on a worker-name conflict.
    pub async fn register_worker(
        &self,
        conn: &Arc<Conn>,
        data: &Value,
    ) -> Result<Value, ErrorBody> {
        let s = |k: &str| data.get(k).and_then(Value::as_str).map(str::to_string);
        let requested_ns = s("namespace");
        if requested_ns.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(ErrorBody::new(
                codes::INVALID_NAMESPACE,
                "namespace must not be blank",
            ));
        }
        // A namespace fixed by the grace period cannot be moved by a late declaration.
        let ns = conn
            .namespace()
            .or(requested_ns)
            .unwrap_or_else(|| DEFAULT_NS.to_string());
        if let Some(access) = conn.access() {
            if let Err(e) = access.may_use_namespace(&ns) {
                // What it buffered was meant for that namespace: unless it declares one it may
                // use, the grace period must not apply it in `default`.
                conn.state.lock().namespace_refused = Some(ns);
                return Err(e);
            }
        }
        let name = s("name")
            .map(|n| sanitize_name(&n))
            .filter(|n| !n.is_empty());
        if let Some(name) = &name {
            let conflict = {
                let mut names = self.inner.names.lock();
                let key = (ns.clone(), name.clone());
                let holder = names.get(&key).copied().filter(|id| *id != conn.id);
                match holder
                    .and_then(|id| self.conn(id))
                    .filter(|c| !c.is_closing())
                {
                    Some(owner) => Some(owner),
                    None => {
                        names.retain(|_, id| *id != conn.id);
                        names.insert(key, conn.id);
                        None
                    }
                }
            };
            if let Some(owner) = conflict {
                tracing::warn!(worker = %name, namespace = %ns, "worker name already in use in this namespace; closing the new connection");
                let _ = conn
                    .send(out::worker_conflict(&ns, name, &owner.id_str))
                    .await;
                conn.close();
                return Ok(json!({ "success": false }));
            }
        }
        let buffered = {
            let mut st = conn.state.lock();
            st.meta.runtime = s("runtime");
            st.meta.version = s("version");
            st.meta.name = name.clone();
            st.meta.description = s("description").map(|d| sanitize_name(&d));
            st.meta.os = s("os");
            st.meta.pid = data.get("pid").and_then(Value::as_u64);
            st.meta.isolation = data.get("isolation").cloned().filter(|v| !v.is_null());
            st.meta.telemetry = data.get("telemetry").cloned().filter(|v| !v.is_null());
            let first = st.namespace.is_none();
            st.namespace = Some(ns.clone());
            if first {
                std::mem::take(&mut st.buffer)
            } else {
                Vec::new()
            }
        };
        self.functions_changed();
        for text in buffered {
            crate::session::apply_registration(self, conn, &ns, &text).await;
        }
        tracing::info!(worker_id = %conn.id_str, name = name.as_deref().unwrap_or(""), namespace = %ns, "worker registered");
        self.fire_workers_available("worker_metadata_updated", &conn.id_str);
        Ok(json!({ "success": true }))
    }

    /// Fixes the namespace to `default` when the grace period ends without a declaration.
    pub(crate) async fn namespace_grace_expired(&self, conn: &Arc<Conn>) {
        let buffered = {
            let mut st = conn.state.lock();
            if st.namespace.is_some() {
                return;
            }
            st.namespace = Some(DEFAULT_NS.into());
            if let Some(ns) = st.namespace_refused.take() {
                let dropped = std::mem::take(&mut st.buffer).len();
                st.buffer_bytes = 0;
                if dropped > 0 {
                    tracing::warn!(worker_id = %conn.id_str, namespace = %ns, count = dropped, "the namespace this worker declared was refused; the registrations it sent before are dropped, not applied in `default`");
                }
                return;
            }
            std::mem::take(&mut st.buffer)
        };
        if !buffered.is_empty() {
            tracing::info!(worker_id = %conn.id_str, count = buffered.len(), "no namespace declared within the grace period; applying registrations in `default`");
        }
        for text in buffered {
            crate::session::apply_registration(self, conn, DEFAULT_NS, &text).await;
        }
    }

    /// `reattach`: retire the previous connection of a reconnecting worker (PROTOCOL.md §2.3).
    pub(crate) async fn reattach(&self, conn: &Arc<Conn>, f: &Frame<'_>) {
        let (Some(prev), Some(token)) =
            (f.previous_worker_id.as_deref(), f.reattach_token.as_deref())
        else {
            tracing::debug!("reattach without previous_worker_id or token ignored");
            return;
        };
        let (Ok(prev_id), Ok(tok)) = (
            iii_protocol::parse_uuid("previous_worker_id", prev),
            iii_protocol::parse_uuid("reattach_token", token),
        ) else {
            tracing::warn!("reattach with malformed ids ignored");
            return;
        };
        if prev_id == conn.id {
            return;
        }
        let Some(old) = self.conn(prev_id) else {
            tracing::debug!(
                previous_worker_id = prev,
                "reattach: previous connection already gone"
            );
            return;
        };
        if old.token != tok {
            tracing::warn!(
                previous_worker_id = prev,
                "reattach refused: token does not match"
            );
            return;
        }
        tracing::info!(previous_worker_id = prev, worker_id = %conn.id_str, "reattach: evicting previous connection");
        old.close();
        if !old.wait_cleaned(Duration::from_secs(5)).await {
            tracing::warn!(
                previous_worker_id = prev,
                "reattach: previous connection cleanup did not finish within 5 s"
            );
        }
    }

    /// The data channels.
    pub fn channels(&self) -> &Channels {
        &self.inner.channels
    }

    /// In-process worker names, in the order services declared them.
    pub fn in_process_workers(&self) -> Vec<&'static str> {
        self.inner.in_process_workers.read().clone()
    }

    /// Declares an in-process worker (once per name).
    pub(crate) fn add_in_process_worker(&self, name: &'static str) {
        let mut w = self.inner.in_process_workers.write();
        if !w.contains(&name) {
            w.push(name);
        }
    }

    /// Removes what a service instance of `worker` installed (`old`) and its replacement
    /// (`keep`) did not install again: its functions (unless a worker has since registered the
    /// same id), its trigger types (their bindings park until a provider returns), its
    /// invocation provider; with no replacement, also the worker's name in listings.
    pub async fn retire(
        &self,
        worker: &'static str,
        old: &crate::service::Installed,
        keep: Option<&crate::service::Installed>,
    ) {
        let kept_fn = |id: &String| keep.is_some_and(|k| k.functions.contains(id));
        let kept_ty = |id: &String| keep.is_some_and(|k| k.trigger_types.contains(id));
        let mut removed = false;
        {
            let mut f = self.inner.functions.write();
            if let Some(m) = f.get_mut(DEFAULT_NS) {
                for id in old.functions.iter().filter(|id| !kept_fn(id)) {
                    if m.get(id).is_some_and(|e| e.engine_worker == Some(worker)) {
                        m.remove(id);
                        removed = true;
                    }
                }
            }
        }
        if removed {
            self.functions_changed();
        }
        let mut sends = crate::triggers::Sends::new();
        for id in old.trigger_types.iter().filter(|id| !kept_ty(id)) {
            sends.extend(self.triggers().unregister_builtin_type(self, worker, id));
        }
        crate::triggers::deliver(sends).await;
        if old.invocation_provider && !keep.is_some_and(|k| k.invocation_provider) {
            let mut p = self.inner.invocation_provider.write();
            if p.as_ref().is_some_and(|p| p.worker == worker) {
                *p = None;
            }
        }
        if keep.is_none() {
            self.inner
                .in_process_workers
                .write()
                .retain(|w| *w != worker);
            self.functions_changed();
        }
    }

    /// When the core was created, in ms since the Unix epoch.
    pub fn started_ms(&self) -> u64 {
        self.inner.started_ms
    }

    /// Calls in flight.
    pub fn pending_len(&self) -> usize {
        self.inner.pending.len()
    }
}

/// The session's payload check of a call to `entry` (PROTOCOL.md §3.9): `Ok` at once when its
/// listener does not validate or the function has no `request_format`.
fn check_call(conn: &Conn, entry: &FunctionEntry, f: &Frame<'_>) -> Result<(), ErrorBody> {
    match conn.validator() {
        Some(v) if entry.request_format.is_some() => {
            v.check_call(entry, f.data.map_or("null", RawValue::get))
        }
        _ => Ok(()),
    }
}

/// The entry to check a call's result against, when the caller's listener checks results and
/// the function declares a `response_format`.
fn result_check(conn: &Conn, entry: &Arc<FunctionEntry>) -> Option<Arc<FunctionEntry>> {
    let checks = conn.validator().is_some_and(|v| v.checks_results());
    (checks && entry.response_format.is_some()).then(|| entry.clone())
}

/// Hands a successful result to the caller's result check (log only).
fn checked_result(caller: &Conn, entry: &FunctionEntry, result: Option<&str>) {
    if let Some(v) = caller.validator() {
        v.check_result(entry, result);
    }
}

/// Takes the caller's (if a worker) and the callee's slots for one more call in flight.
fn call_slots(caller: Option<&Arc<Conn>>, target: &Arc<Conn>) -> Option<Vec<CallSlot>> {
    let mut slots = Vec::with_capacity(2);
    if let Some(c) = caller {
        slots.push(CallSlot::acquire(c, true)?);
    }
    slots.push(CallSlot::acquire(target, false)?);
    Some(slots)
}

/// The refusal of a call over a connection's limit of calls in flight.
fn too_many_calls(caller: &Arc<Conn>, target: &Arc<Conn>) -> ErrorBody {
    let limit = target.limits.max_pending_calls;
    tracing::warn!(caller = %caller.id_str, callee = %target.id_str, limit, "call refused: too many calls in flight");
    ErrorBody::new(
        TOO_MANY_PENDING_CALLS,
        format!("call refused: the caller or the callee already has {limit} calls in flight (config key max_pending_calls)"),
    )
}

/// The error a call ends with when its frame could not be queued for the callee.
fn send_failed(e: &SendError) -> ErrorBody {
    match e {
        SendError::TooLarge { .. } => {
            ErrorBody::new(FRAME_TOO_LARGE, format!("call not forwarded: {e}"))
        }
        SendError::SlowConsumer { .. } => stopped(),
        SendError::Closed => ErrorBody::new(
            codes::CHANNEL_SEND_FAILED,
            "target worker connection closed while sending",
        ),
    }
}

/// Queues an `invocationresult` for `conn`; a result too large for the worker becomes a
/// structured error in its place, so the caller is answered instead of disconnected.
fn send_result(
    conn: &Conn,
    id: &str,
    function_id: &str,
    outcome: Result<Option<&str>, &ErrorBody>,
    traceparent: Option<&str>,
    baggage: Option<&str>,
) {
    let frame = out::invocation_result(id, function_id, outcome, traceparent, baggage);
    if let Err(e @ SendError::TooLarge { .. }) = conn.try_send(frame) {
        tracing::warn!(worker_id = %conn.id_str, function_id, error = %e, "result not delivered: too large");
        let err = ErrorBody::new(FRAME_TOO_LARGE, format!("result not delivered: {e}"));
        let frame = out::invocation_result(id, function_id, Err(&err), traceparent, baggage);
        let _ = conn.try_send(frame);
    }
}

/// The error a call ends with when its caller or callee went away.
pub fn stopped() -> ErrorBody {
    ErrorBody::new(codes::INVOCATION_STOPPED, "Invocation stopped")
}

/// Strips control and bidi characters and caps the length (PROTOCOL.md §2.4).
pub fn sanitize_name(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && !matches!(*c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
        .take(280)
        .collect::<String>()
        .trim()
        .to_string()
}
