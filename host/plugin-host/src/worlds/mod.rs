//! One module per WIT package@version: its bindings, the host imports it links, the proxies
//! that turn store-trait calls into component calls, and the export check of each world.
//!
//! Adding a family (queue, pubsub, lock) is a marker type in `iii-adapter-api`, a module here
//! that implements [`WorldBinding`] for it and its store trait for `Adapter<Marker>`, and one
//! line in [`PACKAGES`]. The supervisor ([`Adapter`]) and the loader do not change.

pub mod adapter_v0_1;
pub mod lock_v0_1;
pub mod policy_v0_1;
pub mod pubsub_v0_1;
pub mod queue_v0_1;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use iii_adapter_api::{AdapterErrorKind, AdapterSpec, AdapterWorld};
use wasmtime::component::{Instance, InstancePre, Linker};
use wasmtime::Store;

use crate::adapter::Adapter;
use crate::caps::AdapterCtx;
use crate::error::PluginError;
use crate::host::PluginHost;

/// Every WIT package@version this host links. A new package adds its module's `PACKAGE` here.
pub(crate) const PACKAGES: &[&Package] = &[
    &adapter_v0_1::PACKAGE,
    &queue_v0_1::PACKAGE,
    &policy_v0_1::PACKAGE,
    &pubsub_v0_1::PACKAGE,
    &lock_v0_1::PACKAGE,
];

/// How the plugin host runs components of one world `Self` (an `iii-adapter-api` marker).
/// Implemented by the world modules of this crate; the supervisor is generic over it.
pub trait WorldBinding: AdapterWorld + Sized + Send + Sync {
    /// Export names the component must have (`package/interface@version`), checked by name
    /// before instantiation so the error names the missing one.
    const EXPORTS: &'static [&'static str];
    /// Export indices, resolved and type-checked once per component.
    type Indices: Send + Sync + 'static;
    /// Export handles of one live instance.
    type Exports: Send + Sync + 'static;

    /// Resolves and type-checks the exports against the component.
    fn indices(pre: &InstancePre<AdapterCtx>) -> Result<Self::Indices, ExportMismatch>;

    /// The export handles of a fresh instance.
    fn load(
        indices: &Self::Indices,
        store: &mut Store<AdapterCtx>,
        instance: &Instance,
    ) -> wasmtime::Result<Self::Exports>;

    /// Runs the instance's initialiser (`lifecycle.init`), once per (re)start.
    fn init<'a>(
        exports: &'a Self::Exports,
        store: &'a mut Store<AdapterCtx>,
    ) -> impl Future<Output = wasmtime::Result<Result<(), GuestError>>> + Send + 'a;

    /// The adapter as the world's store trait object.
    fn into_store(adapter: Arc<Adapter<Self>>) -> Arc<Self::Store>;
}

/// An export that exists by name but not with the signatures the world expects.
#[derive(Debug)]
pub struct ExportMismatch {
    /// The export, `package/interface@version`.
    pub export: &'static str,
    /// wasmtime's type-check error.
    pub error: wasmtime::Error,
}

/// An error an adapter returned through its world's `error` type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestError {
    /// The adapter's classification.
    pub kind: AdapterErrorKind,
    /// The adapter's message.
    pub message: String,
}

/// A WIT package@version: the host imports it links and the worlds it provides.
pub(crate) struct Package {
    /// Adds the package's host imports (e.g. logging, config) to the shared linker.
    pub(crate) add_imports: fn(&mut Linker<AdapterCtx>) -> wasmtime::Result<()>,
    /// The worlds of the package a loader may ask for.
    pub(crate) worlds: &'static [World],
}

/// A loaded store (`Arc<W::Store>`), boxed for [`iii_adapter_api::AdapterLoader`].
pub(crate) type AnyStore = Box<dyn Any + Send + Sync>;

/// The future of an erased load.
pub(crate) type LoadFuture<'a> =
    Pin<Box<dyn Future<Output = Result<AnyStore, PluginError>> + Send + 'a>>;

/// The type-erased load of one world.
type ErasedLoad = for<'a> fn(&'a PluginHost, &'a AdapterSpec) -> LoadFuture<'a>;

/// One world a package provides.
pub(crate) struct World {
    /// The world's WIT name ([`AdapterWorld::WORLD`]).
    pub(crate) name: &'static str,
    pub(crate) load: ErasedLoad,
}

/// The registry entry of world `W`.
pub(crate) const fn world<W: WorldBinding>() -> World {
    World {
        name: W::WORLD,
        load: load_erased::<W>,
    }
}

fn load_erased<'a, W: WorldBinding>(host: &'a PluginHost, spec: &'a AdapterSpec) -> LoadFuture<'a> {
    Box::pin(async move {
        let adapter = host.load_adapter::<W>(spec).await?;
        let store: Arc<W::Store> = W::into_store(adapter);
        Ok(Box::new(store) as AnyStore)
    })
}

/// The registered world called `name`.
pub(crate) fn find(name: &str) -> Option<&'static World> {
    PACKAGES
        .iter()
        .flat_map(|p| p.worlds.iter())
        .find(|w| w.name == name)
}

/// Every registered world name, for error messages.
pub(crate) fn names() -> String {
    PACKAGES
        .iter()
        .flat_map(|p| p.worlds.iter())
        .map(|w| format!("`{}`", w.name))
        .collect::<Vec<_>>()
        .join(", ")
}
