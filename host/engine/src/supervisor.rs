//! The running services, and every change to them while the engine runs.
//!
//! One [`Supervisor`] owns the services after start-up. It is the engine's
//! [`ServiceControl`]: the `configuration` service hands it new values, and the `config.yaml`
//! watcher ([`crate::watch`]) hands it whole new files. Either way a change is validated by the
//! owning service's pure `configure` phase first, so a bad value changes nothing, and changes
//! are serialised by one lock.
//!
//! How a changed service takes its new configuration depends on the `x-apply` tier of the
//! fields that changed ([`ApplyTier`]): `live` fields go to the running instance
//! ([`LiveConfig`]); `rebind` recreates the service (a service that holds nothing exclusive but
//! its ports, [`Service::may_overlap`], starts the new instance before the old one drains;
//! others stop first, and get their old configuration back if the new one cannot start);
//! `restart` is reported, not applied.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use iii_core::config::{ConfigError, EntryReader};
use iii_core::control::{
    changed_fields, Applied, ApplyTier, ControlError, ServiceControl, ServiceSetting,
};
use iii_core::{
    CancellationToken, Configured, Core, Entry, Handles, Installed, LiveConfig, PrepareCx,
    Prepared, Registrar, Service, ServiceInfo, StartError,
};
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::config::{ConfiguredService, EngineConfig};

/// How long a stopped service instance may take to flush before it is aborted.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(5);

/// One running service instance.
struct Slot {
    info: ServiceInfo,
    /// The `config:` blocks it runs with.
    blocks: Vec<Value>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    live: Option<Arc<dyn LiveConfig>>,
    listening: Vec<(&'static str, SocketAddr)>,
    installed: Installed,
}

impl Slot {
    /// Cancels its task and waits for it to flush (aborting it after [`STOP_GRACE`]).
    async fn stop(&mut self) {
        self.stop_within(STOP_GRACE).await
    }

    /// Cancels its task and waits up to `grace` for it to flush, then aborts it.
    async fn stop_within(&mut self, grace: Duration) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(grace, task).await.is_err() {
                tracing::warn!(
                    service = self.info.name,
                    "did not stop within {grace:?}; aborted"
                );
                abort.abort();
            }
        }
    }
}

/// State while start-up is still preparing services: values applied now replace a service's
/// `config.yaml` blocks for this start.
#[derive(Default)]
struct Boot {
    /// Services already prepared (a value for one of them is applied after start-up).
    prepared: Vec<&'static str>,
    overrides: HashMap<&'static str, (Box<dyn Configured>, Vec<Value>)>,
    late: Vec<(String, Value)>,
}

/// The running services.
pub(crate) struct Supervisor {
    core: Core,
    project_dir: PathBuf,
    handles: tokio::sync::Mutex<Handles>,
    slots: tokio::sync::Mutex<Vec<Slot>>,
    boot: parking_lot::Mutex<Option<Boot>>,
    settings: parking_lot::RwLock<Vec<ServiceSetting>>,
    /// Bumped by every settings refresh ([`ServiceControl::changes`]).
    generation: tokio::sync::watch::Sender<u64>,
}

/// The service implementation named `name` in the service list.
fn service_named(name: &str) -> Option<Box<dyn Service>> {
    crate::services()
        .into_iter()
        .find(|s| s.info().name == name)
}

/// Runs `service`'s configure phase on JSON `blocks` (one per entry); errors name `origin`.
fn configure_blocks(
    service: &dyn Service,
    info: ServiceInfo,
    blocks: &[Value],
    origin: &str,
) -> Result<Box<dyn Configured>, ConfigError> {
    let yaml: Vec<serde_yaml::Value> = blocks
        .iter()
        .map(|b| serde_yaml::to_value(b).unwrap_or(serde_yaml::Value::Null))
        .collect();
    let entries: Vec<Entry<'_>> = yaml
        .iter()
        .enumerate()
        .map(|(i, config)| Entry {
            at: format!("{origin}[{i}]({})", info.name),
            name: info.name,
            config,
            reader: EntryReader { path: origin },
        })
        .collect();
    service.configure(&entries)
}

/// The setting a configurable service shows, or `None` for one without a schema (or with
/// several entries, which are configured in `config.yaml` only).
fn setting_of(info: ServiceInfo, blocks: &[Value]) -> Option<ServiceSetting> {
    if info.repeatable {
        return None;
    }
    let schema = service_named(info.name)?.config_schema()?;
    let description = schema
        .get("description")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("Configuration of the `{}` service", info.name));
    Some(ServiceSetting {
        id: info.worker.to_string(),
        name: info.name.to_string(),
        description,
        schema,
        value: blocks.first().cloned().unwrap_or_else(|| json!({})),
    })
}

/// The tier a change from `old` to `new` blocks needs, and the `restart`-tier fields among the
/// changed ones.
fn tier_of(info: ServiceInfo, old: &[Value], new: &[Value]) -> (Option<ApplyTier>, Vec<String>) {
    if old == new {
        return (None, Vec::new());
    }
    let schema = service_named(info.name).and_then(|s| s.config_schema());
    let (Some(schema), false, true) = (schema, info.repeatable, old.len() <= 1 && new.len() <= 1)
    else {
        return (Some(ApplyTier::Rebind), Vec::new());
    };
    let empty = json!({});
    let o = old.first().unwrap_or(&empty);
    let n = new.first().unwrap_or(&empty);
    let tier = ApplyTier::of_change(&schema, o, n);
    let restart = changed_fields(o, n)
        .into_iter()
        .filter(|k| ApplyTier::of_field(&schema, k) == ApplyTier::Restart)
        .collect();
    (tier, restart)
}

/// Installs `p` as the in-process worker `worker` and returns what it registered.
fn install(core: &Core, worker: &'static str, p: &mut Box<dyn Prepared>) -> Installed {
    let mut reg = Registrar::new(core, worker);
    p.install(&mut reg);
    reg.into_installed()
}

impl Supervisor {
    /// Prepares, installs and runs every configured service (nothing serves until all
    /// prepared), and returns the supervisor with the addresses they listen on.
    pub(crate) async fn boot(
        cfg: EngineConfig,
        mut handles: Handles,
    ) -> Result<(Arc<Supervisor>, Vec<(&'static str, SocketAddr)>), StartError> {
        let core = Core::new(cfg.core.clone());
        let settings = cfg
            .services
            .iter()
            .filter_map(|s| setting_of(s.info, &s.blocks))
            .collect();
        let sup = Arc::new(Supervisor {
            core: core.clone(),
            project_dir: cfg.project_dir.clone(),
            handles: tokio::sync::Mutex::new(Handles::default()),
            slots: tokio::sync::Mutex::new(Vec::new()),
            boot: parking_lot::Mutex::new(Some(Boot::default())),
            settings: parking_lot::RwLock::new(settings),
            generation: tokio::sync::watch::channel(0).0,
        });
        let control: Arc<dyn ServiceControl> = sup.clone();
        handles.insert(control);

        let mut prepared: Vec<(ServiceInfo, Vec<Value>, Box<dyn Prepared>)> = Vec::new();
        for ConfiguredService {
            info,
            mut configured,
            mut blocks,
        } in cfg.services
        {
            if let Some(b) = sup.boot.lock().as_mut() {
                if let Some((c, bl)) = b.overrides.remove(info.worker) {
                    tracing::info!(
                        service = info.name,
                        "starting with its stored configuration"
                    );
                    configured = c;
                    blocks = bl;
                }
                b.prepared.push(info.worker);
            }
            let mut cx = PrepareCx::new(&core, &cfg.project_dir, &mut handles);
            let p = configured.prepare(&mut cx).await?;
            prepared.push((info, blocks, p));
        }
        let mut listening = Vec::new();
        let mut installs = Vec::new();
        for (info, _, p) in prepared.iter_mut() {
            installs.push(install(&core, info.worker, p));
            listening.extend(p.listening());
        }
        let mut slots = Vec::new();
        for ((info, blocks, p), installed) in prepared.into_iter().zip(installs) {
            slots.push(Self::run_slot(&core, info, blocks, p, installed));
        }
        *sup.slots.lock().await = slots;
        *sup.handles.lock().await = handles;
        let late = sup.boot.lock().take().map(|b| b.late).unwrap_or_default();
        for (id, value) in late {
            if let Err(e) = sup.apply(&id, value).await {
                tracing::warn!("stored configuration of `{id}` not applied: {e}");
            }
        }
        Ok((sup, listening))
    }

    /// Starts a prepared instance's task.
    fn run_slot(
        core: &Core,
        info: ServiceInfo,
        blocks: Vec<Value>,
        p: Box<dyn Prepared>,
        installed: Installed,
    ) -> Slot {
        let live = p.live();
        let listening = p.listening();
        let stop = CancellationToken::new();
        let task = p
            .run(core.clone(), stop.clone())
            .map(|fut| tokio::spawn(fut));
        Slot {
            info,
            blocks,
            stop,
            task,
            live,
            listening,
            installed,
        }
    }

    /// The core.
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// What every running service listens on now.
    pub(crate) async fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        self.slots
            .lock()
            .await
            .iter()
            .flat_map(|s| s.listening.clone())
            .collect()
    }

    /// Stops every service in reverse start order.
    pub(crate) async fn shutdown(&self, per_service: Duration) {
        let mut slots = self.slots.lock().await;
        for s in slots.iter_mut().rev() {
            s.stop_within(per_service).await;
        }
    }

    fn refresh_settings(&self, slots: &[Slot]) {
        *self.settings.write() = slots
            .iter()
            .filter_map(|s| setting_of(s.info, &s.blocks))
            .collect();
        self.generation.send_modify(|g| *g += 1);
    }

    /// Prepares `configured` for slot `info`.
    async fn prepare(
        &self,
        configured: Box<dyn Configured>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let mut handles = self.handles.lock().await;
        let mut cx = PrepareCx::new(&self.core, &self.project_dir, &mut handles);
        configured.prepare(&mut cx).await
    }

    /// Installs a prepared replacement of `old` and retires what only `old` registered.
    async fn swap_in(&self, old: &Slot, p: &mut Box<dyn Prepared>) -> Installed {
        let installed = install(&self.core, old.info.worker, p);
        self.core
            .retire(old.info.worker, &old.installed, Some(&installed))
            .await;
        installed
    }

    /// Replaces the instance in `slots[idx]` by one configured with `configured` / `blocks`.
    async fn recreate(
        &self,
        slots: &mut [Slot],
        idx: usize,
        service: &dyn Service,
        configured: Box<dyn Configured>,
        blocks: Vec<Value>,
    ) -> Result<(), StartError> {
        let info = slots[idx].info;
        if service.may_overlap() {
            if let Ok(mut p) = self.prepare(configured).await {
                let installed = self.swap_in(&slots[idx], &mut p).await;
                let mut old = std::mem::replace(
                    &mut slots[idx],
                    Self::run_slot(&self.core, info, blocks, p, installed),
                );
                old.stop().await;
                return Ok(());
            }
            // Most likely its port is still the old instance's: stop that one first.
        }
        slots[idx].stop().await;
        let origin = "(run-time configuration)";
        let attempt = match configure_blocks(service, info, &blocks, origin) {
            Ok(c) => self.prepare(c).await,
            Err(e) => Err(StartError::Service {
                service: info.name,
                message: e.to_string(),
            }),
        };
        match attempt {
            Ok(mut p) => {
                let installed = self.swap_in(&slots[idx], &mut p).await;
                slots[idx] = Self::run_slot(&self.core, info, blocks, p, installed);
                Ok(())
            }
            Err(e) => {
                // Back to what it ran with before.
                let old_blocks = slots[idx].blocks.clone();
                let restored = match configure_blocks(service, info, &old_blocks, origin) {
                    Ok(c) => self.prepare(c).await.ok(),
                    Err(_) => None,
                };
                match restored {
                    Some(mut p) => {
                        let installed = self.swap_in(&slots[idx], &mut p).await;
                        slots[idx] = Self::run_slot(&self.core, info, old_blocks, p, installed);
                        tracing::warn!(service = info.name, "new configuration failed to start ({e}); running with the previous one");
                    }
                    None => {
                        self.core
                            .retire(info.worker, &slots[idx].installed, None)
                            .await;
                        tracing::error!(service = info.name, "new configuration failed to start ({e}) and the previous one could not be restored; the service is stopped");
                    }
                }
                Err(e)
            }
        }
    }

    /// Applies new blocks to the running `slots[idx]` by tier.
    async fn change(
        &self,
        slots: &mut [Slot],
        idx: usize,
        service: &dyn Service,
        configured: Box<dyn Configured>,
        blocks: Vec<Value>,
    ) -> Result<Applied, StartError> {
        let info = slots[idx].info;
        let (tier, restart) = tier_of(info, &slots[idx].blocks, &blocks);
        match tier {
            None => Ok(Applied {
                tier: None,
                note: None,
            }),
            Some(ApplyTier::Restart) => {
                let note = format!("applies at next start: {}", restart.join(", "));
                tracing::warn!(service = info.name, "configuration change {note}");
                Ok(Applied {
                    tier,
                    note: Some(note),
                })
            }
            Some(ApplyTier::Live) => {
                if let Some(live) = slots[idx].live.clone() {
                    match live.apply_live(configured.as_ref()) {
                        Ok(()) => {
                            slots[idx].blocks = blocks;
                            tracing::info!(service = info.name, "configuration applied live");
                            return Ok(Applied { tier, note: None });
                        }
                        Err(why) => tracing::info!(
                            service = info.name,
                            "live apply declined ({why}); recreating"
                        ),
                    }
                }
                self.recreate(slots, idx, service, configured, blocks)
                    .await?;
                Ok(Applied {
                    tier: Some(ApplyTier::Rebind),
                    note: None,
                })
            }
            Some(ApplyTier::Rebind) => {
                self.recreate(slots, idx, service, configured, blocks)
                    .await?;
                tracing::info!(
                    service = info.name,
                    "configuration applied; service recreated"
                );
                Ok(Applied { tier, note: None })
            }
        }
    }

    /// Applies a whole new `config.yaml` (already validated by parsing): adds, removes and
    /// changes services; unchanged ones keep running. Returns a one-line summary.
    pub(crate) async fn reload(&self, cfg: EngineConfig) -> Result<String, String> {
        let mut slots = self.slots.lock().await;
        // Removing the entry of an always-on service that listens would silently move it to
        // its default address: refuse the file instead. (Others just return to their defaults.)
        for s in slots.iter() {
            if s.info.always_on
                && !s.listening.is_empty()
                && !s.blocks.is_empty()
                && cfg
                    .services
                    .iter()
                    .any(|n| n.info.name == s.info.name && n.blocks.is_empty())
            {
                return Err(format!(
                    "the file removes the `{}` entry, which is mandatory; edit its config instead",
                    s.info.name
                ));
            }
        }
        let (mut added, mut removed, mut changed, mut unchanged, mut pending, mut failed) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            0usize,
            Vec::new(),
            Vec::new(),
        );
        let new_names: Vec<&str> = cfg.services.iter().map(|s| s.info.name).collect();
        // Removed: stop in reverse order.
        let mut i = slots.len();
        while i > 0 {
            i -= 1;
            if !new_names.contains(&slots[i].info.name) {
                let mut s = slots.remove(i);
                s.stop().await;
                self.core.retire(s.info.worker, &s.installed, None).await;
                removed.push(s.info.name);
            }
        }
        for (
            pos,
            ConfiguredService {
                info,
                configured,
                blocks,
            },
        ) in cfg.services.into_iter().enumerate()
        {
            let Some(service) = service_named(info.name) else {
                continue;
            };
            match slots.iter().position(|s| s.info.name == info.name) {
                Some(idx) => {
                    if slots[idx].blocks == blocks {
                        unchanged += 1;
                        continue;
                    }
                    match self
                        .change(&mut slots, idx, service.as_ref(), configured, blocks)
                        .await
                    {
                        Ok(a) if a.tier == Some(ApplyTier::Restart) => pending.push(info.name),
                        Ok(_) => changed.push(info.name),
                        Err(e) => failed.push(format!("{}: {e}", info.name)),
                    }
                }
                None => match self.prepare(configured).await {
                    Ok(mut p) => {
                        let installed = install(&self.core, info.worker, &mut p);
                        let slot = Self::run_slot(&self.core, info, blocks, p, installed);
                        let at = pos.min(slots.len());
                        slots.insert(at, slot);
                        added.push(info.name);
                    }
                    Err(e) => failed.push(format!("{}: {e}", info.name)),
                },
            }
        }
        self.refresh_settings(&slots);
        let mut summary = format!(
            "added {added:?}, removed {removed:?}, changed {changed:?}, unchanged {unchanged}"
        );
        if !pending.is_empty() {
            summary.push_str(&format!(", at next start {pending:?}"));
        }
        if failed.is_empty() {
            Ok(summary)
        } else {
            Err(format!("{summary}; failed: {}", failed.join("; ")))
        }
    }
}

#[async_trait::async_trait]
impl ServiceControl for Supervisor {
    fn settings(&self) -> Vec<ServiceSetting> {
        self.settings.read().clone()
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    async fn apply(&self, id: &str, value: Value) -> Result<Applied, ControlError> {
        let Some(setting) = self.settings().into_iter().find(|s| s.id == id) else {
            return Err(ControlError::Unknown(id.into()));
        };
        let service =
            service_named(&setting.name).ok_or_else(|| ControlError::Unknown(id.into()))?;
        let info = service.info();
        let blocks = vec![value.clone()];
        let configured = configure_blocks(service.as_ref(), info, &blocks, "configuration")
            .map_err(|source| ControlError::Invalid {
                id: id.into(),
                source,
            })?;
        {
            let mut boot = self.boot.lock();
            if let Some(b) = boot.as_mut() {
                let (tier, _) = tier_of(info, std::slice::from_ref(&setting.value), &blocks);
                if b.prepared.contains(&info.worker) {
                    b.late.push((id.into(), value));
                    return Ok(Applied {
                        tier,
                        note: Some("applies once start-up has finished".into()),
                    });
                }
                b.overrides.insert(info.worker, (configured, blocks));
                let mut s = self.settings.write();
                if let Some(x) = s.iter_mut().find(|s| s.id == id) {
                    x.value = value;
                }
                return Ok(Applied { tier, note: None });
            }
        }
        let mut slots = self.slots.lock().await;
        let Some(idx) = slots.iter().position(|s| s.info.worker == info.worker) else {
            return Err(ControlError::Unknown(id.into()));
        };
        let r = self
            .change(&mut slots, idx, service.as_ref(), configured, blocks)
            .await
            .map_err(|source| ControlError::Start {
                id: id.into(),
                source,
            });
        self.refresh_settings(&slots);
        r
    }
}
