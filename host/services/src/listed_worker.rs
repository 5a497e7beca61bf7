//! Upstream entries this engine accepts and lists as in-process workers but that need no work
//! here yet: `iii-telemetry` (SDK telemetry is accepted on `/otel` and dropped). Each is always on,
//! as upstream lists them whether or not the file names them.

use iii_core::config::ConfigError;
use iii_core::{
    Configured, Entry, PrepareCx, Prepared, Registrar, Service, ServiceInfo, StartError,
};

/// A worker identity with nothing behind it (yet).
pub struct ListedWorker {
    /// The entry name, also the worker name.
    pub name: &'static str,
}

struct Listed;

impl Service for ListedWorker {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: self.name,
            worker: self.name,
            deprecated_names: &[],
            repeatable: false,
            always_on: true,
        }
    }

    fn configure(&self, _entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        Ok(Box::new(Listed))
    }
}

#[async_trait::async_trait]
impl Configured for Listed {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        Ok(self)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Prepared for Listed {
    fn install(&mut self, _reg: &mut Registrar<'_>) {}
}
