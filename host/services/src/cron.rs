//! The `cron` trigger type (PROTOCOL.md §4.6.2) with every fire behind a [`LockStore`]
//! (§8.6). Config entry `cron` (`iii-cron` is the deprecated name).
//!
//! Each armed binding has one timer task, cancelled when the binding goes. At a tick the task
//! takes the lease `cron:<trigger id>` for this engine (TTL `lock_ttl_ms`) and runs the job
//! only if it got it; the holder renews the lease at every tick, so with a shared lock backend
//! one engine fires each job until it stops renewing. The builtin lock (`kv` / `local`) is a
//! map in this process: it serialises nothing between engines.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use iii_adapter_api::{AdapterSource, AdapterSpec, LocalLocks, LockStore, LockWorld};
use iii_core::config::ConfigError;
use iii_core::triggers::{Binding, BuiltinTriggerType};
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, PrepareCx, Prepared, Registrar, Service,
    ServiceInfo, StartError, TriggerTypeSpec, WeakCore,
};
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{adapter_spec, load_adapter};

/// The cron service.
pub struct Cron;

/// Default lease of one fire, milliseconds (§7.4 `lock_ttl_ms`).
pub const DEFAULT_LOCK_TTL_MS: u64 = 30_000;

/// Which lock the `cron` entry chose.
#[derive(Debug, Clone, PartialEq)]
pub enum LockChoice {
    /// The in-process lock table (`name: kv`, the default, or `name: local`).
    Local,
    /// A component of the `iii:lock/lock-adapter@0.1.0` world.
    Component(AdapterSpec),
    /// The embedded Redis component (`name: redis`): one fire per tick across engines.
    Redis(AdapterSpec),
}

/// What the `cron` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct CronConfig {
    /// The lock.
    pub lock: LockChoice,
    /// The lease taken at each fire.
    pub lock_ttl_ms: u64,
}

/// Adapter `config:` keys the builtin lock accepts: its own, and the kv store keys upstream
/// configs carry (the lock keeps no files, so they are checked and unused).
const LOCAL_LOCK_KEYS: &[&str] = &[
    "lock_ttl_ms",
    "lock_index",
    "store_method",
    "file_path",
    "save_interval_ms",
];

impl Service for Cron {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "cron",
            worker: "iii-cron",
            deprecated_names: &["iii-cron"],
            repeatable: false,
            always_on: false,
        }
    }

    fn config_schema(&self) -> Option<Value> {
        use crate::config_schema::*;
        Some(block(
            "iii-cron",
            vec![(
                "adapter",
                field(RESTART, "cron lock adapter (kv)", adapter()),
            )],
            false,
        ))
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut cc = CronConfig {
            lock: LockChoice::Local,
            lock_ttl_ms: DEFAULT_LOCK_TTL_MS,
        };
        let Some(e) = entries.first() else {
            return Ok(Box::new(cc));
        };
        let at = e.key("config");
        let Some(m) = e.reader.mapping(e.config, &at)? else {
            return Ok(Box::new(cc));
        };
        e.reader.check_keys(m, &at, &["adapter"])?;
        if m.get("adapter").is_none_or(serde_yaml::Value::is_null) {
            return Ok(Box::new(cc));
        }
        let spec = adapter_spec(e, m)?;
        let aat = format!("{at}.adapter");
        cc.lock = match &spec.source {
            AdapterSource::Name(n) if n == "kv" || n == "local" => {
                if let Some(k) = spec.config.keys().find(|k| !LOCAL_LOCK_KEYS.contains(&k.as_str())) {
                    return Err(e.reader.error(format!(
                        "`{aat}.config.{k}`: unknown key for the builtin cron lock; known: {}",
                        LOCAL_LOCK_KEYS.join(", ")
                    )));
                }
                if let Some(v) = spec.config.get("lock_index") {
                    if !v.is_string() {
                        return Err(e.reader.error(format!(
                            "`{aat}.config.lock_index`: expected a string, found {v}"
                        )));
                    }
                }
                LockChoice::Local
            }
            AdapterSource::Name(n) if n == "redis" => LockChoice::Redis(spec.clone()),
            AdapterSource::Name(n) => {
                return Err(e.reader.error(format!(
                    "`{aat}`: unknown cron lock adapter `{n}`; use `name: kv`, or `path:` to a component of the {} world",
                    <LockWorld as iii_adapter_api::AdapterWorld>::WORLD
                )))
            }
            AdapterSource::Path(_) => LockChoice::Component(spec.clone()),
        };
        if let Some(v) = spec.config.get("lock_ttl_ms") {
            cc.lock_ttl_ms = v.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                e.reader.error(format!(
                    "`{aat}.config.lock_ttl_ms`: expected an integer of at least 1 (milliseconds), found {v}"
                ))
            })?;
        }
        Ok(Box::new(cc))
    }
}

#[async_trait::async_trait]
impl Configured for CronConfig {
    async fn prepare(
        self: Box<Self>,
        cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let lock: Arc<dyn LockStore> = match &self.lock {
            LockChoice::Local => {
                tracing::info!(
                    adapter = "kv",
                    "cron service ready (the builtin lock is per engine: engines sharing jobs each fire them)"
                );
                Arc::new(LocalLocks::new())
            }
            LockChoice::Component(spec) => load_adapter::<LockWorld>(cx, "cron", spec).await?.0,
            LockChoice::Redis(spec) => {
                let spec = crate::common::redis_spec("cron", spec)?;
                load_adapter::<LockWorld>(cx, "cron", &spec).await?.0
            }
        };
        Ok(Box::new(CronService::new(lock, self.lock_ttl_ms)))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The prepared service: the lock, this engine's owner name, and the timers.
pub struct CronService {
    jobs: Arc<Jobs>,
}

impl CronService {
    /// A service firing behind `lock` with leases of `lock_ttl_ms`.
    pub fn new(lock: Arc<dyn LockStore>, lock_ttl_ms: u64) -> Self {
        CronService {
            jobs: Arc::new(Jobs {
                core: Mutex::new(None),
                lock,
                owner: format!("iii-engine-{}", uuid::Uuid::new_v4()),
                lock_ttl_ms,
                stop: CancellationToken::new(),
                timers: Mutex::default(),
            }),
        }
    }
}

/// Everything a timer needs; shared by the trigger type and the timers.
struct Jobs {
    /// Weak: the core owns the trigger type that owns this.
    core: Mutex<Option<WeakCore>>,
    lock: Arc<dyn LockStore>,
    owner: String,
    lock_ttl_ms: u64,
    /// Cancelled at shutdown; every timer's token is a child of it.
    stop: CancellationToken,
    timers: Mutex<HashMap<String, CancellationToken>>,
}

/// Parses a binding's expression with the message of §4.6.2 on failure.
fn parse_expression(config: &Value) -> Result<cron::Schedule, String> {
    let expr = match config.get("expression") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.trim(),
        Some(_) => return Err("`expression` must be a string".into()),
    };
    if expr.is_empty() {
        return Err("Cron expression is required".into());
    }
    let fields = expr.split_whitespace().count();
    if !expr.starts_with('@') && !(6..=7).contains(&fields) {
        return Err(format!(
            "Invalid cron expression `{expr}`: {fields} fields; write 6 (sec min hour day-of-month month day-of-week) or 7 (the same plus year), in UTC"
        ));
    }
    cron::Schedule::from_str(expr).map_err(|e| format!("Invalid cron expression `{expr}`: {e}"))
}

/// The lease key of a job.
fn lock_key(job_id: &str) -> String {
    format!("cron:{job_id}")
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// One job as its timer sees it.
struct Job {
    id: String,
    function_id: String,
    namespace: String,
    metadata: Option<String>,
    condition: Option<String>,
}

impl Jobs {
    /// The timer of one binding: sleeps to each tick, then fires on its own task so a slow
    /// job never delays the next tick.
    async fn timer(
        self: Arc<Self>,
        job: Arc<Job>,
        schedule: cron::Schedule,
        stop: CancellationToken,
    ) {
        let mut after = Utc::now();
        loop {
            let Some(tick) = schedule.after(&after).next() else {
                tracing::info!(trigger_id = %job.id, "cron expression has no future tick; timer ends");
                return;
            };
            let wait = (tick - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let now = Utc::now();
            // Woken late (a suspended host): skip the missed ticks instead of replaying them.
            after = if now - tick > chrono::Duration::seconds(1) {
                now
            } else {
                tick
            };
            let Some(core) = self.core.lock().as_ref().and_then(WeakCore::upgrade) else {
                return;
            };
            let (jobs, job) = (self.clone(), job.clone());
            tokio::spawn(async move { jobs.fire(core, &job, tick, now).await });
        }
    }

    async fn fire(&self, core: Core, job: &Job, scheduled: DateTime<Utc>, actual: DateTime<Utc>) {
        match self
            .lock
            .try_acquire(&lock_key(&job.id), &self.owner, self.lock_ttl_ms)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(trigger_id = %job.id, "cron lock held by another engine; tick skipped");
                return;
            }
            Err(e) => {
                tracing::warn!(trigger_id = %job.id, error = %e, "cron lock adapter failed; tick skipped");
                return;
            }
        }
        let payload = json!({"trigger": "cron", "job_id": job.id,
            "scheduled_time": rfc3339(scheduled), "actual_time": rfc3339(actual)})
        .to_string();
        let meta = job.metadata.as_deref();
        if let Some(cond) = &job.condition {
            match core.condition(&job.namespace, cond, &payload, meta).await {
                Ok(false) => return,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(trigger_id = %job.id, condition = %cond, error = %e, "condition function failed; cron tick skipped");
                    return;
                }
            }
        }
        // Renew the lease while the job runs, so a job longer than `lock_ttl_ms` is not
        // fired again by another engine whose tick comes while it is still running.
        let call = core.call(&job.namespace, &job.function_id, &payload, meta, None);
        tokio::pin!(call);
        let every = std::time::Duration::from_millis((self.lock_ttl_ms / 3).max(1));
        let result = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(every) => {
                    if let Err(e) = self
                        .lock
                        .try_acquire(&lock_key(&job.id), &self.owner, self.lock_ttl_ms)
                        .await
                    {
                        tracing::warn!(trigger_id = %job.id, error = %e, "could not renew the cron lease while the job runs");
                    }
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(trigger_id = %job.id, function_id = %job.function_id, error = %e, "cron job failed");
        }
    }
}

/// The `cron` trigger type: arming validates the expression and starts the binding's timer.
struct CronType(Arc<Jobs>);

impl BuiltinTriggerType for CronType {
    fn register(&self, b: &Binding) -> Result<(), String> {
        let schedule = parse_expression(&b.config)?;
        let condition = match b.config.get("condition_function_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("`condition_function_id` must be a string".into()),
        };
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| "the cron service is not running".to_string())?;
        let job = Arc::new(Job {
            id: b.id.clone(),
            function_id: b.function_id.clone(),
            namespace: b.namespace.clone(),
            metadata: b.metadata.as_ref().map(Value::to_string),
            condition,
        });
        let stop = self.0.stop.child_token();
        // Re-registering an id replaces its schedule: the old timer stops first.
        if let Some(old) = self.0.timers.lock().insert(b.id.clone(), stop.clone()) {
            old.cancel();
        }
        rt.spawn(self.0.clone().timer(job, schedule, stop));
        Ok(())
    }

    fn unregister(&self, b: &Binding) {
        if let Some(t) = self.0.timers.lock().remove(&b.id) {
            t.cancel();
            // Free the lease so another engine may take the job at its next tick.
            let jobs = self.0.clone();
            let key = lock_key(&b.id);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = jobs.lock.release(&key, &jobs.owner).await;
                });
            }
        }
    }
}

impl Prepared for CronService {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        *self.jobs.core.lock() = Some(reg.core().downgrade());
        reg.trigger_type(TriggerTypeSpec {
            id: "cron".into(),
            description: "Runs on a schedule: 6 or 7 cron fields, seconds first, UTC".into(),
            config_schema: Some(json!({"type": "object", "required": ["expression"], "properties": {
                "expression": {"type": "string", "description": "sec min hour day-of-month month day-of-week [year], UTC"},
                "condition_function_id": {"type": "string"}}})),
            request_schema: Some(json!({"type": "object", "properties": {
                "trigger": {"const": "cron"}, "job_id": {"type": "string"},
                "scheduled_time": {"type": "string", "format": "date-time"},
                "actual_time": {"type": "string", "format": "date-time"}}})),
            response_schema: None,
            provider: Arc::new(CronType(self.jobs.clone())),
        });
    }

    fn run(self: Box<Self>, _core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        let jobs = self.jobs;
        Some(Box::pin(async move {
            stop.cancelled().await;
            jobs.stop.cancel();
            let held: Vec<String> = jobs.timers.lock().drain().map(|(id, _)| id).collect();
            for id in held {
                let _ = jobs.lock.release(&lock_key(&id), &jobs.owner).await;
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_core::testing::TestCore;

    fn binding(id: &str, function_id: &str, config: Value) -> Binding {
        Binding {
            id: id.into(),
            trigger_type: "cron".into(),
            function_id: function_id.into(),
            config,
            metadata: None,
            owner: None,
            namespace: "default".into(),
            trigger_namespace: None,
            home_namespace: "default".into(),
            provider: None,
        }
    }

    fn bind(t: &TestCore, id: &str, function_id: &str, config: Value) -> Result<(), String> {
        t.core
            .triggers()
            .upsert(binding(id, function_id, config), &mut Vec::new())
            .map_err(|e| e.message)
    }

    #[test]
    fn expressions_take_six_or_seven_fields() {
        assert!(parse_expression(&json!({"expression": "*/5 * * * * *"})).is_ok());
        assert!(parse_expression(&json!({"expression": "0 0 12 * * * 2030"})).is_ok());
        assert!(parse_expression(&json!({"expression": "@hourly"})).is_ok());
        let e = parse_expression(&json!({"expression": "*/5 * * * *"})).unwrap_err();
        assert!(e.starts_with("Invalid cron expression"), "{e}");
        assert!(e.contains("5 fields"), "{e}");
        let e = parse_expression(&json!({"expression": "61 * * * * *"})).unwrap_err();
        assert!(e.starts_with("Invalid cron expression"), "{e}");
        assert_eq!(
            parse_expression(&json!({"expression": "  "})).unwrap_err(),
            "Cron expression is required"
        );
        assert_eq!(
            parse_expression(&json!({})).unwrap_err(),
            "Cron expression is required"
        );
        assert!(parse_expression(&json!({"expression": 5})).is_err());
    }

    #[tokio::test]
    async fn an_every_second_job_fires_with_the_payload_and_stops_when_unbound() {
        let mut t = TestCore::new();
        t.start(&Cron, "").await.unwrap();
        let log = t.recorder("jobs::tick", Value::Null);
        bind(
            &t,
            "tick",
            "jobs::tick",
            json!({"expression": "* * * * * * *"}),
        )
        .unwrap();
        let got = TestCore::wait_for(&log, 2, 3500).await;
        assert!(got.len() >= 2, "{got:?}");
        let p = &got[0];
        assert_eq!(p["trigger"], "cron");
        assert_eq!(p["job_id"], "tick");
        let sched = DateTime::parse_from_rfc3339(p["scheduled_time"].as_str().unwrap()).unwrap();
        let actual = DateTime::parse_from_rfc3339(p["actual_time"].as_str().unwrap()).unwrap();
        assert_eq!(
            sched.timestamp_subsec_millis(),
            0,
            "ticks fall on whole seconds"
        );
        assert!(actual >= sched && actual - sched < chrono::Duration::milliseconds(500));
        let _ = t.core.triggers().unregister("tick");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let n = log.lock().len();
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(log.lock().len(), n, "an unbound job must not fire");
    }

    #[tokio::test]
    async fn bad_expressions_are_registration_errors_and_keep_the_old_binding() {
        let mut t = TestCore::new();
        t.start(&Cron, "").await.unwrap();
        let _log = t.recorder("jobs::f", Value::Null);
        let e = bind(&t, "j", "jobs::f", json!({"expression": "* * * * *"})).unwrap_err();
        assert!(e.starts_with("Invalid cron expression"), "{e}");
        let e = bind(&t, "j", "jobs::f", json!({"expression": ""})).unwrap_err();
        assert_eq!(e, "Cron expression is required");
        assert!(t.core.triggers().binding("j").is_none());
        bind(
            &t,
            "j",
            "jobs::f",
            json!({"expression": "0 0 0 1 1 * 2099"}),
        )
        .unwrap();
        bind(
            &t,
            "j",
            "jobs::f",
            json!({"expression": "nonsense x y z a b"}),
        )
        .unwrap_err();
        let kept = t.core.triggers().binding("j").unwrap();
        assert_eq!(kept.config["expression"], "0 0 0 1 1 * 2099");
    }

    #[tokio::test]
    async fn a_false_condition_skips_and_a_held_lock_skips() {
        let locks = Arc::new(LocalLocks::new());
        let mut t = TestCore::new();
        t.start(&Cron, "").await.unwrap();
        let log = t.recorder("jobs::gated", Value::Null);
        let _no = t.recorder("jobs::no", json!(false));
        bind(
            &t,
            "gated",
            "jobs::gated",
            json!({"expression": "* * * * * *", "condition_function_id": "jobs::no"}),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2200)).await;
        assert!(log.lock().is_empty(), "condition false must skip");

        // Two engines behind one lock: each tick runs on exactly one of them.
        let a = TestCore::new();
        let b = TestCore::new();
        let logs: Vec<_> = [&a, &b]
            .iter()
            .map(|t| {
                let svc = CronService::new(locks.clone(), 60_000);
                let mut boxed: Box<dyn Prepared> = Box::new(svc);
                boxed.install(&mut Registrar::new(&t.core, "iii-cron"));
                let log = t.recorder("jobs::shared", Value::Null);
                t.core
                    .triggers()
                    .upsert(
                        binding(
                            "shared",
                            "jobs::shared",
                            json!({"expression": "* * * * * *"}),
                        ),
                        &mut Vec::new(),
                    )
                    .unwrap();
                log
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(3200)).await;
        let (na, nb) = (logs[0].lock().len(), logs[1].lock().len());
        assert!(na + nb >= 2, "{na} + {nb}");
        assert!(
            na == 0 || nb == 0,
            "one engine holds the job: {na} and {nb}"
        );
        assert_eq!(locks.live(), 1);
    }

    #[test]
    fn adapter_choices_are_checked_at_configure() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut t = TestCore::new();
        let start = |t: &mut TestCore, c: &str| rt.block_on(t.start(&Cron, c));
        start(&mut t, "{adapter: {name: kv, config: {lock_ttl_ms: 5000, lock_index: cron_locks, store_method: file_based, file_path: ./data}}}").unwrap();
        let mut t = TestCore::new();
        start(&mut t, "{adapter: {name: local}}").unwrap();
        let e = start(
            &mut t,
            "{adapter: {name: redis, config: {redis_url: 'redis://x:1'}, grants: {network: ['y:1']}}}",
        )
        .unwrap_err();
        assert!(e.contains("grants.network") && e.contains("x:1"), "{e}");
        let e = start(&mut t, "{adapter: {name: kv, config: {lock_ttl: 5}}}").unwrap_err();
        assert!(e.contains("lock_ttl"), "{e}");
        let e = start(&mut t, "{adapter: {name: kv, config: {lock_ttl_ms: 0}}}").unwrap_err();
        assert!(e.contains("at least 1"), "{e}");
    }
}
