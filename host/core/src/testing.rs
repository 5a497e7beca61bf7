//! A core in a test, with no process, no socket and no wasmtime: start a service on it from a
//! YAML `config:` value, call functions, and register in-process test functions that record
//! what they receive. Feature `testing`.

use std::path::PathBuf;
use std::sync::Arc;

use iii_protocol::ErrorBody;
use parking_lot::Mutex;
use serde_json::Value;

use crate::config::EntryReader;
use crate::service::{
    CancellationToken, Entry, FunctionSpec, Handles, PrepareCx, Registrar, Service,
};
use crate::{Core, CoreSettings, DEFAULT_NS};

/// A core plus the handles services prepare with, and a temporary project directory.
pub struct TestCore {
    /// The core.
    pub core: Core,
    /// Handles for prepare (insert e.g. an in-memory adapter loader).
    pub handles: Handles,
    /// Project directory (removed on drop).
    pub dir: PathBuf,
    stops: Vec<CancellationToken>,
}

impl Default for TestCore {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCore {
    /// An empty core in a fresh temporary directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("iii-core-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TestCore {
            core: Core::new(CoreSettings::default()),
            handles: Handles::default(),
            dir,
            stops: Vec::new(),
        }
    }

    /// Configures `service` from one entry whose `config:` is `config_yaml` (empty for none),
    /// then prepares, installs and runs it. Errors come back as their messages.
    pub async fn start(&mut self, service: &dyn Service, config_yaml: &str) -> Result<(), String> {
        let info = service.info();
        let config: serde_yaml::Value = if config_yaml.trim().is_empty() {
            serde_yaml::Value::Null
        } else {
            serde_yaml::from_str(config_yaml).map_err(|e| e.to_string())?
        };
        let entries = [Entry {
            at: format!("workers[0]({})", info.name),
            name: info.name,
            config: &config,
            reader: EntryReader { path: "test.yaml" },
        }];
        let configured = service.configure(&entries).map_err(|e| e.to_string())?;
        let mut cx = PrepareCx::new(&self.core, &self.dir, &mut self.handles);
        let mut prepared = configured
            .prepare(&mut cx)
            .await
            .map_err(|e| e.to_string())?;
        let mut reg = Registrar::new(&self.core, info.worker);
        prepared.install(&mut reg);
        let stop = CancellationToken::new();
        if let Some(fut) = prepared.run(self.core.clone(), stop.clone()) {
            tokio::spawn(fut);
        }
        self.stops.push(stop);
        Ok(())
    }

    /// Calls `function_id` in `default` with `input` as an in-process caller would.
    pub async fn call(&self, function_id: &str, input: Value) -> Result<Value, ErrorBody> {
        let r = self
            .core
            .call(DEFAULT_NS, function_id, &input.to_string(), None, None)
            .await?;
        Ok(
            r.map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
                .unwrap_or(Value::Null),
        )
    }

    /// Registers `function_id` for the in-process worker `test-worker`; every input it gets is
    /// appended to the returned log, and it answers `answer`.
    pub fn recorder(&self, function_id: &str, answer: Value) -> Arc<Mutex<Vec<Value>>> {
        let log: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = log.clone();
        let mut reg = Registrar::new(&self.core, "test-worker");
        reg.function(FunctionSpec::raw(
            function_id,
            "test recorder",
            move |_c, _ctx, v| {
                seen.lock().push(v);
                let answer = answer.clone();
                async move { Ok(answer) }
            },
        ));
        log
    }

    /// Waits up to `ms` for `log` to hold at least `n` entries.
    pub async fn wait_for(log: &Arc<Mutex<Vec<Value>>>, n: usize, ms: u64) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
        loop {
            let got = log.lock().clone();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestCore {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
