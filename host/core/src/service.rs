//! The service seam: every capability of the engine (engine functions, HTTP triggers, state,
//! stream, and next queue, pubsub, cron, RBAC, …) is a [`Service`], started in four phases.
//!
//! 1. **configure**: pure validation of the service's `config.yaml` entries ([`Service::configure`]).
//!    No I/O, so a whole file can be checked before anything changes.
//! 2. **prepare**: side effects that can fail: bind ports, load adapters ([`Configured::prepare`]).
//!    Every service prepares before any serves, so a port clash fails start-up cleanly. A
//!    service that needs another's handle asks the [`PrepareCx`] for it by type.
//! 3. **install**: synchronous and infallible ([`Prepared::install`]): functions with their
//!    schemas, trigger types with theirs, on a [`Registrar`] that stamps the service's worker
//!    name on everything.
//! 4. **run**: long-running tasks under a [`CancellationToken`] ([`Prepared::run`]). Shutdown
//!    cancels them in reverse order and waits for each to finish flushing.
//!
//! The core never names a service: the composition root holds the one list and iterates it.

use iii_protocol::codes;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use iii_protocol::ErrorBody;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
pub use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, EntryReader};
use crate::core::{BoxFut, BuiltinFn, CallCtx, Core};
use crate::reply::Reply;
use crate::triggers::BuiltinTriggerType;

/// How a service appears in `config.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The entry name (upstream 0.22+ naming, e.g. `http`, `state`).
    pub name: &'static str,
    /// Its in-process worker name in `engine::workers::list` (upstream's, e.g. `iii-http`);
    /// everything it registers is stamped with it.
    pub worker: &'static str,
    /// Older names still accepted, each with one deprecation warning (e.g. `iii-http`).
    pub deprecated_names: &'static [&'static str],
    /// May the entry appear more than once (several worker-socket listeners)?
    pub repeatable: bool,
    /// Does the service run when the file does not list it (with its defaults)?
    pub always_on: bool,
}

/// One `workers:` entry handed to [`Service::configure`].
pub struct Entry<'a> {
    /// Where it is: `workers[2](state)`; config keys are reported below it.
    pub at: String,
    /// The name as written.
    pub name: &'a str,
    /// Its `config:` value (null when absent).
    pub config: &'a serde_yaml::Value,
    /// Typed reads that name the file and key in errors.
    pub reader: EntryReader<'a>,
}

impl Entry<'_> {
    /// The dotted key of `k` below this entry, e.g. `workers[2](state).config.port`.
    pub fn key(&self, k: &str) -> String {
        format!("{}.{k}", self.at)
    }
}

/// A capability of the engine. Implementations live in their own module or crate and never
/// import each other.
pub trait Service: Send + Sync {
    /// Its config names and how often it may appear.
    fn info(&self) -> ServiceInfo;

    /// Validates every entry naming this service (empty when an always-on service is not
    /// listed) and returns the configured, not yet started, service. Pure: no I/O.
    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError>;

    /// JSON Schema of its `config:` block, with `"x-apply": "live" | "rebind" | "restart"` on
    /// each top-level property (see [`crate::control::ApplyTier`]). A service with a schema is
    /// configurable at run time (`configuration::*`, hot reload of its entry's `config:`).
    fn config_schema(&self) -> Option<Value> {
        None
    }

    /// May a new instance prepare and serve while the old one still runs? True for a service
    /// that holds nothing exclusive but its ports (its listeners then rebind new-first, and the
    /// old instance drains after). False (the default) stops the old instance first.
    fn may_overlap(&self) -> bool {
        false
    }
}

/// A validated service, ready to prepare.
#[async_trait]
pub trait Configured: Send + Sync + Any {
    /// Binds ports, loads adapters, checks directories: everything that can fail before
    /// anything serves.
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError>;

    /// The typed config, for the composition root (e.g. the log level the CLI needs before
    /// start).
    fn as_any(&self) -> &dyn Any;
}

/// A prepared service: installs itself, then runs.
pub trait Prepared: Send {
    /// Registers functions, trigger types and the worker identity. Infallible.
    fn install(&mut self, reg: &mut Registrar<'_>);

    /// The addresses it listens on, labelled (`worker socket`, `REST trigger server`).
    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        Vec::new()
    }

    /// Its long-running task, if any. It must return soon after `stop` is cancelled, having
    /// flushed what must survive.
    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let _ = (core, stop);
        None
    }

    /// A handle that applies `live`-tier changes to the running service in place. Without one,
    /// every change recreates the service.
    fn live(&self) -> Option<Arc<dyn LiveConfig>> {
        None
    }
}

/// Applies a new configuration to a running service in place.
pub trait LiveConfig: Send + Sync {
    /// Takes `next` (the service's own configured value, see [`Configured::as_any`]); called
    /// only when every changed field is `live`. An `Err` makes the caller recreate the service
    /// instead.
    fn apply_live(&self, next: &dyn Configured) -> Result<(), String>;
}

/// A start-up failure, naming the service and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A port could not be bound.
    #[error("cannot listen on {host}:{port} for {what}: {source}")]
    Bind {
        /// The listener (service and entry).
        what: String,
        /// The configured host.
        host: String,
        /// The configured port.
        port: u16,
        /// Why.
        source: std::io::Error,
    },
    /// A directory or file the service needs could not be created or read.
    #[error("cannot create {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The service could not start for a reason of its own (e.g. its adapter failed to load).
    #[error("cannot start the {service} service: {message}")]
    Service {
        /// The service's config name.
        service: &'static str,
        /// What went wrong, naming the knob to change where there is one.
        message: String,
    },
    /// A handle the service needs was not provided by any service before it.
    #[error("the {service} service needs {needs}, which no earlier service provides")]
    MissingHandle {
        /// The service's config name.
        service: &'static str,
        /// The handle's type.
        needs: &'static str,
    },
}

/// What [`Configured::prepare`] gets: the core, the project directory, and handles other
/// services (or the composition root) provided, by type.
pub struct PrepareCx<'a> {
    core: &'a Core,
    project_dir: &'a Path,
    handles: &'a mut Handles,
}

/// Handles shared between services' prepare phases, keyed by type.
#[derive(Default)]
pub struct Handles(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl Handles {
    /// Stores `value` as the handle of type `T` (replacing an earlier one).
    pub fn insert<T: Any + Send + Sync>(&mut self, value: T) {
        self.0.insert(TypeId::of::<T>(), Box::new(value));
    }

    /// The handle of type `T`, if provided.
    pub fn get<T: Any + Send + Sync + Clone>(&self) -> Option<T> {
        self.0
            .get(&TypeId::of::<T>())
            .and_then(|b| b.downcast_ref::<T>())
            .cloned()
    }
}

impl<'a> PrepareCx<'a> {
    /// A context over `handles`, resolving relative paths against `project_dir`.
    pub fn new(core: &'a Core, project_dir: &'a Path, handles: &'a mut Handles) -> Self {
        PrepareCx {
            core,
            project_dir,
            handles,
        }
    }

    /// The core (tables exist; nothing is served yet).
    pub fn core(&self) -> &Core {
        self.core
    }

    /// The directory relative paths and default data directories resolve in.
    pub fn project_dir(&self) -> &Path {
        self.project_dir
    }

    /// `<project>/.iii/data/<name>`, created.
    pub fn data_dir(&self, name: &str) -> Result<PathBuf, StartError> {
        let dir = self.project_dir.join(".iii").join("data").join(name);
        std::fs::create_dir_all(&dir).map_err(|source| StartError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        Ok(dir)
    }

    /// The handle of type `T` another service provided, or a [`StartError::MissingHandle`].
    pub fn get<T: Any + Send + Sync + Clone>(
        &self,
        service: &'static str,
    ) -> Result<T, StartError> {
        self.handles.get::<T>().ok_or(StartError::MissingHandle {
            service,
            needs: std::any::type_name::<T>(),
        })
    }

    /// Provides a handle to the services prepared after this one.
    pub fn provide<T: Any + Send + Sync>(&mut self, value: T) {
        self.handles.insert(value);
    }
}

/// An in-process function as a service registers it.
pub struct FunctionSpec {
    /// The function id, e.g. `state::set`.
    pub id: String,
    /// One line for `engine::functions::list`.
    pub description: String,
    /// JSON Schema of the input, for `engine::functions::info`.
    pub request_schema: Option<Value>,
    /// JSON Schema of the result.
    pub response_schema: Option<Value>,
    /// Free-form metadata (`{"internal": true}` hides it from listings).
    pub metadata: Option<Value>,
    /// The handler.
    pub handler: BuiltinFn,
}

impl FunctionSpec {
    /// A function whose input is deserialized into `In` (null counts as `{}`); a bad input is a
    /// `deserialization_error` naming the function. The request schema comes from `In`.
    pub fn typed<In, F, Fut>(id: impl Into<String>, description: impl Into<String>, f: F) -> Self
    where
        In: DeserializeOwned + schemars::JsonSchema + Send + 'static,
        F: Fn(Core, CallCtx, In) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        Self::typed_reply(id, description, move |core, ctx, i: In| {
            let fut = f(core, ctx, i);
            async move { fut.await.map(Reply::Value) }
        })
    }

    /// As [`FunctionSpec::typed`], for a handler that may answer with JSON it serialised
    /// before ([`Reply::Shared`], e.g. a cached listing), which is sent without re-serialising.
    pub fn typed_reply<In, F, Fut>(
        id: impl Into<String>,
        description: impl Into<String>,
        f: F,
    ) -> Self
    where
        In: DeserializeOwned + schemars::JsonSchema + Send + 'static,
        F: Fn(Core, CallCtx, In) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Reply, ErrorBody>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: BuiltinFn = Arc::new(move |core, ctx, v| {
            let f = f.clone();
            Box::pin(async move {
                let i: In = input(&ctx, v)?;
                f(core, ctx, i).await
            })
        });
        FunctionSpec {
            id: id.into(),
            description: description.into(),
            request_schema: Some(schema_of::<In>()),
            response_schema: None,
            metadata: None,
            handler,
        }
    }

    /// A function that gets its input as raw JSON (null stays null); set its schema with
    /// [`FunctionSpec::accepts`].
    pub fn raw<F, Fut>(id: impl Into<String>, description: impl Into<String>, f: F) -> Self
    where
        F: Fn(Core, CallCtx, Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<Value, ErrorBody>> + Send + 'static,
    {
        FunctionSpec {
            id: id.into(),
            description: description.into(),
            request_schema: None,
            response_schema: None,
            metadata: None,
            handler: Arc::new(move |core, ctx, v| {
                let fut = f(core, ctx, v);
                Box::pin(async move { fut.await.map(Reply::Value) })
            }),
        }
    }

    /// Sets the request schema.
    pub fn accepts(mut self, schema: Value) -> Self {
        self.request_schema = Some(schema);
        self
    }

    /// Sets the response schema.
    pub fn returns(mut self, schema: Value) -> Self {
        self.response_schema = Some(schema);
        self
    }

    /// Sets the metadata.
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// The JSON Schema of `T`, without the `$schema` header.
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let settings = schemars::gen::SchemaSettings::draft07().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut v = serde_json::to_value(schema).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
        o.remove("definitions");
    }
    v
}

/// Input of a function that takes nothing (`null` or `{}`).
#[derive(serde::Deserialize, schemars::JsonSchema)]
pub struct NoInput {}

/// Deserializes a function's input (`null` = `{}`); failures are `deserialization_error`
/// (PROTOCOL.md §3.9).
pub fn input<T: DeserializeOwned>(ctx: &CallCtx, v: Value) -> Result<T, ErrorBody> {
    let v = if v.is_null() { json!({}) } else { v };
    serde_json::from_value(v).map_err(|e| {
        ErrorBody::new(
            codes::DESERIALIZATION_ERROR,
            format!("Failed to deserialize input for {}: {e}", ctx.function_id),
        )
    })
}

/// A trigger type implemented by a service.
pub struct TriggerTypeSpec {
    /// The type id, e.g. `state`.
    pub id: String,
    /// One line for `engine::triggers::list`.
    pub description: String,
    /// JSON Schema of a binding's `config`.
    pub config_schema: Option<Value>,
    /// JSON Schema of the payload the bound function receives.
    pub request_schema: Option<Value>,
    /// JSON Schema of what the bound function should return.
    pub response_schema: Option<Value>,
    /// Arms and disarms bindings.
    pub provider: Arc<dyn BuiltinTriggerType>,
}

/// Where a service registers what it provides. Everything is stamped with the service's
/// worker name.
pub struct Registrar<'a> {
    core: &'a Core,
    worker: &'static str,
    installed: Installed,
}

/// What one install of a service registered, so that a run-time change can remove exactly
/// what its replacement does not register again ([`Core::retire`]).
#[derive(Debug, Clone, Default)]
pub struct Installed {
    /// Function ids (in `default`).
    pub functions: std::collections::HashSet<String>,
    /// Trigger type ids (in `default`).
    pub trigger_types: std::collections::HashSet<String>,
    /// Did it install the invocation provider?
    pub invocation_provider: bool,
}

impl<'a> Registrar<'a> {
    /// A registrar for the in-process worker `worker`, which is listed in
    /// `engine::workers::list` from now on.
    pub fn new(core: &'a Core, worker: &'static str) -> Self {
        core.add_in_process_worker(worker);
        Registrar {
            core,
            worker,
            installed: Installed::default(),
        }
    }

    /// What was registered through this registrar.
    pub fn into_installed(self) -> Installed {
        self.installed
    }

    /// The worker name everything is stamped with.
    pub fn worker(&self) -> &'static str {
        self.worker
    }

    /// The core, for handles a service keeps (e.g. to call functions from its tasks).
    pub fn core(&self) -> &Core {
        self.core
    }

    /// Registers a function in `default`.
    pub fn function(&mut self, spec: FunctionSpec) {
        self.installed.functions.insert(spec.id.clone());
        self.core.register_builtin(self.worker, spec);
    }

    /// Serves `registerfunction.invocation` (HTTP-invoked functions, PROTOCOL.md §3.10) with
    /// `provider`: each such registration becomes an in-process handler run on the
    /// registering worker's behalf. Without one, those registrations are refused.
    pub fn invocation_provider(
        &mut self,
        provider: Arc<dyn crate::invocation::InvocationProvider>,
    ) {
        self.installed.invocation_provider = true;
        self.core.set_invocation_provider(self.worker, provider);
    }

    /// Registers a trigger type in `default`.
    pub fn trigger_type(&mut self, spec: TriggerTypeSpec) {
        self.installed.trigger_types.insert(spec.id.clone());
        let sends = self.core.inner.triggers.lock().register_builtin_type(
            crate::triggers::TriggerTypeEntry {
                namespace: crate::core::DEFAULT_NS.into(),
                id: spec.id,
                description: spec.description,
                trigger_request_format: spec.config_schema,
                call_request_format: spec.request_schema,
                response_format: spec.response_schema,
                provider: crate::triggers::Provider::Builtin(spec.provider),
                worker: Some(self.worker),
            },
        );
        // Only a binding re-homed away from a worker's provider sends anything (its disarm).
        if !sends.is_empty() {
            tokio::spawn(crate::triggers::deliver(sends));
        }
    }
}
