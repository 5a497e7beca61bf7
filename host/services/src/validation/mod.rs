//! Opt-in payload validation of a worker-socket listener (`validate: warn | enforce`,
//! PROTOCOL.md §3.9): the [`PayloadValidator`] the listener's service sets on its sessions,
//! checking with the `jsonschema` crate.
//!
//! Compiled validators live in each function entry's derived slot ([`FunctionEntry::derived`]),
//! so they are built on the first checked call and dropped with the registration; every listener
//! shares them. A schema that does not compile is logged once (per registration) and treated as
//! no schema. Trigger-type schemas are not kept with their type, so their validators are cached
//! here by schema text, a small bounded cache (registrations are rare).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use iii_core::validation::PayloadValidator;
use iii_core::FunctionEntry;
use iii_protocol::{codes, ErrorBody};
use jsonschema::Validator;
use parking_lot::Mutex;
use serde_json::{json, Value};

/// What a listener does with its sessions' payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Nothing is checked (upstream's behaviour).
    #[default]
    Off,
    /// Failures are logged and the payload passes; results are checked too.
    Warn,
    /// Failures refuse the call or the registration with `validation_error`.
    Enforce,
}

impl Mode {
    /// The mode a config value names (`off`, `warn`, `enforce`).
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "off" => Some(Mode::Off),
            "warn" => Some(Mode::Warn),
            "enforce" => Some(Mode::Enforce),
            _ => None,
        }
    }

    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// A payload that does not match its schema.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {what} for {subject}: {message} (at JSON pointer \"{instance_path}\")")]
pub struct Invalid {
    /// `input`, `result` or `config`.
    pub what: &'static str,
    /// `function \`x\`` or `trigger type \`t\``.
    pub subject: String,
    /// The validator's message, shortened.
    pub message: String,
    /// JSON pointer of the failing value in the payload (`""` is the whole payload).
    pub instance_path: String,
    /// JSON pointer of the failing keyword in the schema.
    pub schema_path: String,
}

/// The longest validator message kept: it quotes the failing value, which may be large.
const MAX_MESSAGE: usize = 300;

/// Checks `value` against `v`: `Err` describes the first failure.
fn first_failure(
    v: &Validator,
    value: &Value,
    what: &'static str,
    subject: impl FnOnce() -> String,
) -> Result<(), Invalid> {
    let Err(e) = v.validate(value) else {
        return Ok(());
    };
    let mut message = e.to_string();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    Err(Invalid {
        what,
        subject: subject(),
        message,
        instance_path: e.instance_path().to_string(),
        schema_path: e.schema_path().to_string(),
    })
}

/// Compiles `schema`; `None` (logged) when it is not a schema the validator accepts.
fn compile(schema: &Value, subject: &dyn Fn() -> String, which: &str) -> Option<Validator> {
    match jsonschema::validator_for(schema) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(error = %e, "{} of {} does not compile as JSON Schema; it is not checked", which, subject());
            None
        }
    }
}

/// The validators of one function entry, compiled on first use.
#[derive(Default)]
struct Compiled {
    request: OnceLock<Option<Validator>>,
    response: OnceLock<Option<Validator>>,
}

fn compiled(entry: &FunctionEntry) -> Option<&Compiled> {
    entry.derived(|_| Compiled::default())
}

fn function_subject(entry: &FunctionEntry) -> String {
    format!("function `{}`", entry.id)
}

/// Logs at most one line a second, saying how many were left out.
struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(lines left out since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut st = self.state.lock();
        let now = Instant::now();
        if st
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            st.1 += 1;
            return None;
        }
        st.0 = Some(now);
        Some(std::mem::take(&mut st.1))
    }
}

/// How many trigger-type schemas keep their compiled validator.
const TRIGGER_CACHE: usize = 256;

/// One listener's payload checks (`warn` or `enforce`; `off` sets none).
pub struct Validation {
    mode: Mode,
    listener: String,
    /// Log lines about call inputs, results and trigger configs, each at most one a second.
    log_calls: Throttle,
    log_results: Throttle,
    log_configs: Throttle,
    /// Trigger-type schema text → its validator (`None`: it does not compile).
    triggers: Mutex<HashMap<String, Option<Arc<Validator>>>>,
}

impl Validation {
    /// The checks of listener `listener` in `mode`; `None` for [`Mode::Off`].
    pub fn new(mode: Mode, listener: &str) -> Option<Arc<Validation>> {
        (mode != Mode::Off).then(|| {
            Arc::new(Validation {
                mode,
                listener: listener.to_string(),
                log_calls: Throttle::new(),
                log_results: Throttle::new(),
                log_configs: Throttle::new(),
                triggers: Mutex::new(HashMap::new()),
            })
        })
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A failure's outcome in this mode: the refusal (`enforce`) or a log line and `Ok`.
    fn fail(&self, invalid: Invalid, key: (&str, &str), log: &Throttle) -> Result<(), ErrorBody> {
        if let Some(skipped) = log.allow() {
            match self.mode {
                Mode::Enforce => {
                    tracing::info!(listener = %self.listener, repeated = skipped, "refused: {invalid}")
                }
                _ => {
                    tracing::warn!(listener = %self.listener, repeated = skipped, "validate: warn, passed anyway: {invalid}")
                }
            }
        }
        if self.mode != Mode::Enforce {
            return Ok(());
        }
        let mut e = ErrorBody::new(codes::VALIDATION_ERROR, invalid.to_string());
        e.details = Some(json!({
            key.0: key.1,
            "instance_path": invalid.instance_path,
            "schema_path": invalid.schema_path,
        }));
        Err(e)
    }

    fn trigger_validator(&self, trigger_type: &str, schema: &Value) -> Option<Arc<Validator>> {
        let key = schema.to_string();
        if let Some(v) = self.triggers.lock().get(&key) {
            return v.clone();
        }
        // Compiled outside the lock: another registration does not wait for it.
        let subject = || format!("trigger type `{trigger_type}`");
        let v = compile(schema, &subject, "trigger_request_format").map(Arc::new);
        let mut cache = self.triggers.lock();
        if cache.len() >= TRIGGER_CACHE {
            cache.clear();
        }
        cache.insert(key, v.clone());
        v
    }
}

impl PayloadValidator for Validation {
    fn check_call(&self, entry: &FunctionEntry, data: &str) -> Result<(), ErrorBody> {
        let Some(schema) = &entry.request_format else {
            return Ok(());
        };
        let Some(c) = compiled(entry) else {
            return Ok(());
        };
        let subject = || function_subject(entry);
        let Some(v) = c
            .request
            .get_or_init(|| compile(schema, &subject, "request_format"))
        else {
            return Ok(());
        };
        // Not JSON cannot arrive here (frames are parsed); the route's own check answers it.
        let Ok(mut value) = serde_json::from_str::<Value>(data) else {
            return Ok(());
        };
        // The engine's own functions read a missing input as `{}` (§3.9); so does their check.
        if value.is_null() && entry.engine_worker.is_some() {
            value = json!({});
        }
        match first_failure(v, &value, "input", subject) {
            Ok(()) => Ok(()),
            Err(invalid) => self.fail(invalid, ("function_id", &entry.id), &self.log_calls),
        }
    }

    fn checks_results(&self) -> bool {
        self.mode == Mode::Warn
    }

    fn check_result(&self, entry: &FunctionEntry, result: Option<&str>) {
        let (Some(schema), Some(c)) = (&entry.response_format, compiled(entry)) else {
            return;
        };
        let subject = || function_subject(entry);
        let Some(v) = c
            .response
            .get_or_init(|| compile(schema, &subject, "response_format"))
        else {
            return;
        };
        let value = match result.map(serde_json::from_str::<Value>) {
            None => Value::Null,
            Some(Ok(v)) => v,
            Some(Err(_)) => return,
        };
        if let Err(invalid) = first_failure(v, &value, "result", subject) {
            if let Some(skipped) = self.log_results.allow() {
                tracing::warn!(listener = %self.listener, repeated = skipped, "validate: warn, result passed anyway: {invalid}");
            }
        }
    }

    fn check_trigger_config(
        &self,
        trigger_type: &str,
        schema: &Value,
        config: &Value,
    ) -> Result<(), ErrorBody> {
        let Some(v) = self.trigger_validator(trigger_type, schema) else {
            return Ok(());
        };
        match first_failure(&v, config, "config", || {
            format!("trigger type `{trigger_type}`")
        }) {
            Ok(()) => Ok(()),
            Err(invalid) => self.fail(invalid, ("trigger_type", trigger_type), &self.log_configs),
        }
    }
}

#[cfg(test)]
mod tests;
