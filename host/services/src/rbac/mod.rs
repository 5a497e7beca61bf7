//! Worker RBAC of a worker-socket listener (PROTOCOL.md §9): the `rbac` block and
//! `middleware_function_id` of an `iii-worker-manager` entry, as an implementation of the
//! core's access seam ([`iii_core::access`]).
//!
//! The listener's service builds it from its own config entry (the keys are the listener's,
//! as upstream has them) and hands it to the core's listener; the core's session code never
//! sees this module. Everything a policy does it does by calling function ids: the auth
//! function, the three registration hooks and the middleware can each be an SDK function of
//! a trusted worker or an in-process function such as a loaded WebAssembly policy.
//!
//! Every failure of a function this module calls fails closed: an auth function that errors,
//! answers `null` or does not answer in time refuses the connection; a hook that errors drops
//! the registration.

mod rules;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iii_core::access::{ConnectRequest, ListenerAccess, Registration, SessionAccess};
use iii_core::config::{ConfigError, EntryReader};
use iii_core::{Core, DEFAULT_NS};
use iii_protocol::{codes, ids, ErrorBody, Kind};
use serde_json::{json, Map, Value};

pub use rules::{Expected, Pattern, Rule};

/// How long a registration hook may take before the registration is dropped.
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// The `rbac` block of a listener.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RbacConfig {
    /// Called once per connection (§9.2).
    pub auth_function_id: Option<String>,
    /// What sessions may call beyond their grants (§9.3 step 5).
    pub expose_functions: Vec<Rule>,
    /// Hook for `registerfunction` (§9.6).
    pub on_function_registration: Option<String>,
    /// Hook for `registertrigger`.
    pub on_trigger_registration: Option<String>,
    /// Hook for `registertriggertype`.
    pub on_trigger_type_registration: Option<String>,
}

/// A listener's access settings: `rbac` (absent = trusted) and the listener-level middleware.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ListenerPolicy {
    /// The `rbac` block, if the listener has one.
    pub rbac: Option<RbacConfig>,
    /// `middleware_function_id`.
    pub middleware_function_id: Option<String>,
}

impl ListenerPolicy {
    /// Reads `rbac` and `middleware_function_id` from a listener's config mapping (`at` is its
    /// dotted path). `None` when neither is set: the listener is trusted and gated by nothing.
    pub fn from_config(
        r: &EntryReader<'_>,
        m: &serde_yaml::Mapping,
        at: &str,
    ) -> Result<Option<ListenerPolicy>, ConfigError> {
        let mut p = ListenerPolicy::default();
        if let Some(v) = m.get("middleware_function_id").filter(|v| !v.is_null()) {
            p.middleware_function_id =
                Some(function_id(r, v, &format!("{at}.middleware_function_id"))?);
        }
        if let Some(v) = m.get("rbac") {
            let key = format!("{at}.rbac");
            let rm = r.mapping(v, &key)?;
            let mut rbac = RbacConfig::default();
            if let Some(rm) = rm {
                r.check_keys(
                    rm,
                    &key,
                    &[
                        "auth_function_id",
                        "expose_functions",
                        "on_function_registration_function_id",
                        "on_trigger_registration_function_id",
                        "on_trigger_type_registration_function_id",
                    ],
                )?;
                let opt = |k: &str| -> Result<Option<String>, ConfigError> {
                    match rm.get(k).filter(|v| !v.is_null()) {
                        Some(v) => function_id(r, v, &format!("{key}.{k}")).map(Some),
                        None => Ok(None),
                    }
                };
                rbac.auth_function_id = opt("auth_function_id")?;
                rbac.on_function_registration = opt("on_function_registration_function_id")?;
                rbac.on_trigger_registration = opt("on_trigger_registration_function_id")?;
                rbac.on_trigger_type_registration =
                    opt("on_trigger_type_registration_function_id")?;
                if let Some(list) = rm.get("expose_functions").filter(|v| !v.is_null()) {
                    let lkey = format!("{key}.expose_functions");
                    let serde_yaml::Value::Sequence(items) = list else {
                        return Err(r.invalid(&lkey, "a list of rules", list));
                    };
                    for (i, item) in items.iter().enumerate() {
                        rbac.expose_functions
                            .push(rule(r, item, &format!("{lkey}[{i}]"))?);
                    }
                }
            }
            p.rbac = Some(rbac);
        }
        Ok((p.rbac.is_some() || p.middleware_function_id.is_some()).then_some(p))
    }
}

fn function_id(
    r: &EntryReader<'_>,
    v: &serde_yaml::Value,
    key: &str,
) -> Result<String, ConfigError> {
    let s = r.string(v, key)?;
    if s.trim().is_empty() {
        return Err(r.invalid(key, "a function id", v));
    }
    Ok(s)
}

/// One `expose_functions` entry: `match("…")` (or a bare pattern), or a map with exactly one
/// of `match` / `metadata` and an optional `namespace`.
fn rule(r: &EntryReader<'_>, v: &serde_yaml::Value, key: &str) -> Result<Rule, ConfigError> {
    match v {
        serde_yaml::Value::String(s) => Ok(Rule::Match {
            pattern: Pattern::parse(s),
            namespace: DEFAULT_NS.into(),
        }),
        serde_yaml::Value::Mapping(m) => {
            r.check_keys(m, key, &["match", "metadata", "namespace"])?;
            let namespace = match m.get("namespace") {
                Some(n) => r.string(n, &format!("{key}.namespace"))?,
                None => DEFAULT_NS.into(),
            };
            match (m.get("match"), m.get("metadata")) {
                (Some(p), None) => Ok(Rule::Match {
                    pattern: Pattern::parse(&r.string(p, &format!("{key}.match"))?),
                    namespace,
                }),
                (None, Some(md)) => {
                    let mkey = format!("{key}.metadata");
                    let Some(mm) = r.mapping(md, &mkey)? else {
                        return Err(r.invalid(&mkey, "a mapping of metadata keys", md));
                    };
                    let mut wanted = Vec::new();
                    for (k, v) in mm {
                        let k = k
                            .as_str()
                            .ok_or_else(|| r.invalid(&mkey, "string keys", md))?
                            .to_string();
                        let v = serde_json::to_value(v)
                            .map_err(|_| r.invalid(&format!("{mkey}.{k}"), "a JSON value", v))?;
                        wanted.push((k, Expected::from_value(v)));
                    }
                    Ok(Rule::Metadata { wanted, namespace })
                }
                _ => Err(r.error(format!(
                    "`{key}` must have exactly one of `match` or `metadata`"
                ))),
            }
        }
        other => Err(r.invalid(key, "a match(\"…\") string or a rule mapping", other)),
    }
}

/// A listener's gate, built from its [`ListenerPolicy`].
pub struct Gate {
    policy: Arc<ListenerPolicy>,
}

impl Gate {
    /// The gate of a listener with `policy`, as the core's listener takes it.
    pub fn for_listener(policy: ListenerPolicy) -> Arc<dyn ListenerAccess> {
        Arc::new(Gate {
            policy: Arc::new(policy),
        })
    }
}

fn auth_error(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(codes::AUTH_ERROR, message)
}

#[async_trait]
impl ListenerAccess for Gate {
    async fn admit(
        &self,
        core: &Core,
        request: ConnectRequest,
    ) -> Result<Arc<dyn SessionAccess>, ErrorBody> {
        let auth_fn = self
            .policy
            .rbac
            .as_ref()
            .and_then(|r| r.auth_function_id.as_deref());
        let grants = match auth_fn {
            None => Grants::trusted_defaults(),
            Some(f) => {
                let input = serde_json::to_string(&request).unwrap_or_default();
                let out = core
                    .call(DEFAULT_NS, f, &input, None, None)
                    .await
                    .map_err(|e| auth_error(format!("auth function {f} failed: {e}")))?;
                let v: Value = out
                    .map(|r| serde_json::from_str(r.get()).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                Grants::from_auth_result(&v)
                    .map_err(|why| auth_error(format!("auth function {f} {why}")))?
            }
        };
        Ok(Arc::new(Session {
            policy: self.policy.clone(),
            grants,
        }))
    }
}

/// What the auth function granted one session (§9.2 `AuthResult`).
#[derive(Debug, Clone, PartialEq)]
pub struct Grants {
    /// Namespace → grant patterns; the keys also bound what the session may declare.
    pub namespaces: BTreeMap<String, Vec<Pattern>>,
    /// Exact ids allowed in `default`.
    pub allowed_functions: Vec<String>,
    /// Exact ids denied everywhere.
    pub forbidden_functions: Vec<String>,
    /// Trigger types the session may bind (`None` = all).
    pub allowed_trigger_types: Option<Vec<String>>,
    /// May register trigger types.
    pub allow_trigger_type_registration: bool,
    /// May register functions.
    pub allow_function_registration: bool,
    /// Passed to the middleware and hooks.
    pub context: Value,
    /// `P` of `P::X` (§9.7).
    pub function_registration_prefix: Option<String>,
}

impl Grants {
    /// The grants of a session on a listener without an auth function.
    fn trusted_defaults() -> Grants {
        Grants {
            namespaces: BTreeMap::new(),
            allowed_functions: Vec::new(),
            forbidden_functions: Vec::new(),
            allowed_trigger_types: None,
            allow_trigger_type_registration: true,
            allow_function_registration: true,
            context: json!({}),
            function_registration_prefix: None,
        }
    }

    /// Reads an auth function's result; `Err` says what is wrong with it (it refuses the
    /// connection). Unknown keys are ignored.
    pub fn from_auth_result(v: &Value) -> Result<Grants, String> {
        let o = match v {
            Value::Object(o) => o,
            Value::Null => return Err("returned null".into()),
            other => return Err(format!("returned {other}, not an object")),
        };
        let strings = |k: &str| -> Result<Option<Vec<String>>, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| format!("returned a non-string in `{k}`"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                Some(_) => Err(format!("returned `{k}` that is not a list of strings")),
            }
        };
        let flag = |k: &str, default: bool| -> Result<bool, String> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(default),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(format!("returned `{k}` that is not a boolean")),
            }
        };
        let mut namespaces = BTreeMap::new();
        match o.get("namespaces") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (ns, grants) in m {
                    let Value::Array(list) = grants else {
                        return Err(format!("returned `namespaces.{ns}` that is not a list"));
                    };
                    let mut pats = Vec::new();
                    for g in list {
                        let g = g.as_str().ok_or_else(|| {
                            format!("returned a non-string grant in `namespaces.{ns}`")
                        })?;
                        pats.push(Pattern::parse(g));
                    }
                    namespaces.insert(ns.clone(), pats);
                }
            }
            Some(_) => return Err("returned `namespaces` that is not an object".into()),
        }
        let prefix = match o.get("function_registration_prefix") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.trim().is_empty() => {
                Some(s.trim_end_matches("::").to_string())
            }
            Some(_) => {
                return Err(
                    "returned `function_registration_prefix` that is not a non-empty string".into(),
                )
            }
        };
        Ok(Grants {
            namespaces,
            allowed_functions: strings("allowed_functions")?.unwrap_or_default(),
            forbidden_functions: strings("forbidden_functions")?.unwrap_or_default(),
            allowed_trigger_types: strings("allowed_trigger_types")?,
            allow_trigger_type_registration: flag("allow_trigger_type_registration", false)?,
            allow_function_registration: flag("allow_function_registration", true)?,
            context: o.get("context").cloned().unwrap_or_else(|| json!({})),
            function_registration_prefix: prefix,
        })
    }
}

/// One admitted session.
struct Session {
    policy: Arc<ListenerPolicy>,
    grants: Grants,
}

impl Session {
    /// §9.3, without the error text.
    fn decide(&self, core: &Core, id: &str, ns: &str) -> Decision {
        let g = &self.grants;
        if g.forbidden_functions.iter().any(|f| f == id) {
            return Decision::Forbidden;
        }
        if g.namespaces
            .get(ns)
            .is_some_and(|grants| grants.iter().any(|p| p.matches(id)))
        {
            return Decision::Allow;
        }
        if ns == DEFAULT_NS && g.allowed_functions.iter().any(|f| f == id) {
            return Decision::Allow;
        }
        if ids::functions::INFRASTRUCTURE.contains(&id) {
            return Decision::Allow;
        }
        let Some(rbac) = &self.policy.rbac else {
            return Decision::Allow;
        };
        let target = core.lookup(ns, id);
        let metadata = target
            .as_ref()
            .map(|t| t.metadata.clone().unwrap_or(Value::Null));
        if rbac
            .expose_functions
            .iter()
            .any(|r| r.exposes(id, ns, metadata.as_ref()))
        {
            Decision::Allow
        } else {
            Decision::NotExposed
        }
    }

    /// Calls a hook with `input`; its result must be an object (else the registration drops).
    async fn hook(
        &self,
        core: &Core,
        hook: &str,
        input: Value,
    ) -> Result<Map<String, Value>, String> {
        let input = input.to_string();
        let call = core.call(DEFAULT_NS, hook, &input, None, None);
        let out = match tokio::time::timeout(HOOK_TIMEOUT, call).await {
            Err(_) => {
                return Err(format!(
                    "hook {hook} did not answer within {HOOK_TIMEOUT:?}"
                ))
            }
            Ok(Err(e)) => return Err(format!("hook {hook} failed: {e}")),
            Ok(Ok(out)) => out,
        };
        match out.map(|r| serde_json::from_str::<Value>(r.get())) {
            Some(Ok(Value::Object(o))) => Ok(o),
            _ => Err(format!("hook {hook} did not return an object")),
        }
    }
}

enum Decision {
    Allow,
    Forbidden,
    NotExposed,
}

/// Copies the fields a hook may override (`allowed`: hook output key → frame key).
fn overlay(frame: &mut Value, out: &Map<String, Value>, allowed: &[(&str, &str)]) {
    for (from, to) in allowed {
        if let Some(v) = out.get(*from) {
            frame[*to] = v.clone();
        }
    }
}

fn field(frame: &Value, k: &str) -> Value {
    frame.get(k).cloned().unwrap_or(Value::Null)
}

#[async_trait]
impl SessionAccess for Session {
    fn may_call(&self, core: &Core, function_id: &str, namespace: &str) -> Result<(), ErrorBody> {
        match self.decide(core, function_id, namespace) {
            Decision::Allow => Ok(()),
            Decision::Forbidden => {
                tracing::info!(
                    function_id,
                    namespace,
                    "call refused: the session's forbidden_functions lists it"
                );
                Err(ErrorBody::new(
                    codes::FORBIDDEN,
                    format!("function '{function_id}' not allowed (remove from rbac.forbidden_functions)"),
                ))
            }
            Decision::NotExposed => Err(ErrorBody::new(
                codes::FORBIDDEN,
                format!("function '{function_id}' not allowed (add to rbac.expose_functions)"),
            )),
        }
    }

    fn may_use_namespace(&self, namespace: &str) -> Result<(), ErrorBody> {
        let ns = &self.grants.namespaces;
        if ns.is_empty() || ns.contains_key(namespace) {
            return Ok(());
        }
        let permitted: Vec<&str> = ns.keys().map(String::as_str).collect();
        Err(ErrorBody::new(
            codes::FORBIDDEN,
            format!(
                "namespace '{namespace}' not allowed for this session (permitted: {})",
                permitted.join(", ")
            ),
        ))
    }

    fn may_bind_trigger_type(&self, trigger_type: &str) -> bool {
        self.grants
            .allowed_trigger_types
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == trigger_type))
    }

    async fn registration(
        &self,
        core: &Core,
        kind: Kind,
        namespace: &str,
        mut frame: Value,
    ) -> Registration {
        let rbac = self.policy.rbac.as_ref();
        let context = &self.grants.context;
        match kind {
            Kind::RegisterFunction => {
                if !self.grants.allow_function_registration {
                    return Registration::Drop("allow_function_registration is false".into());
                }
                if let Some(hook) = rbac.and_then(|r| r.on_function_registration.as_deref()) {
                    let input = json!({
                        "function_id": field(&frame, "id"),
                        "description": field(&frame, "description"),
                        "metadata": field(&frame, "metadata"),
                        "namespace": namespace,
                        "context": context,
                    });
                    match self.hook(core, hook, input).await {
                        Ok(out) => overlay(
                            &mut frame,
                            &out,
                            &[
                                ("function_id", "id"),
                                ("description", "description"),
                                ("metadata", "metadata"),
                            ],
                        ),
                        Err(why) => return Registration::Drop(why),
                    }
                }
                self.prefix_field(&mut frame, "id");
                Registration::Apply(frame)
            }
            Kind::UnregisterFunction => {
                self.prefix_field(&mut frame, "id");
                Registration::Apply(frame)
            }
            Kind::RegisterTriggerType => {
                if !self.grants.allow_trigger_type_registration {
                    return Registration::Drop("allow_trigger_type_registration is false".into());
                }
                if let Some(hook) = rbac.and_then(|r| r.on_trigger_type_registration.as_deref()) {
                    let input = json!({
                        "trigger_type_id": field(&frame, "id"),
                        "description": field(&frame, "description"),
                        "context": context,
                    });
                    match self.hook(core, hook, input).await {
                        Ok(out) => overlay(
                            &mut frame,
                            &out,
                            &[("trigger_type_id", "id"), ("description", "description")],
                        ),
                        Err(why) => return Registration::Drop(why),
                    }
                }
                Registration::Apply(frame)
            }
            Kind::RegisterTrigger => {
                let trigger_type = frame
                    .get("trigger_type")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                if !self.may_bind_trigger_type(&trigger_type) {
                    return Registration::Drop(format!(
                        "trigger type '{trigger_type}' is not in allowed_trigger_types"
                    ));
                }
                if let Some(hook) = rbac.and_then(|r| r.on_trigger_registration.as_deref()) {
                    let input = json!({
                        "trigger_id": field(&frame, "id"),
                        "trigger_type": trigger_type,
                        "function_id": field(&frame, "function_id"),
                        "config": field(&frame, "config"),
                        "metadata": field(&frame, "metadata"),
                        "namespace": frame.get("namespace").and_then(Value::as_str).unwrap_or(DEFAULT_NS),
                        "context": context,
                    });
                    match self.hook(core, hook, input).await {
                        Ok(out) => overlay(
                            &mut frame,
                            &out,
                            &[
                                ("trigger_id", "id"),
                                ("trigger_type", "trigger_type"),
                                ("function_id", "function_id"),
                                ("config", "config"),
                            ],
                        ),
                        Err(why) => return Registration::Drop(why),
                    }
                }
                self.prefix_field(&mut frame, "function_id");
                let target = frame
                    .get("function_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                // A binding's target resolves in its `namespace`, `default` when absent (§2.3).
                let target_ns = frame
                    .get("namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_NS)
                    .to_string();
                match self.may_call(core, &target, &target_ns) {
                    Ok(()) => Registration::Apply(frame),
                    Err(e) => Registration::Refuse(e),
                }
            }
            _ => Registration::Apply(frame),
        }
    }

    fn prefix(&self) -> Option<&str> {
        self.grants.function_registration_prefix.as_deref()
    }

    fn middleware(&self) -> Option<(&str, &Value)> {
        self.policy
            .middleware_function_id
            .as_deref()
            .map(|m| (m, &self.grants.context))
    }
}

impl Session {
    fn prefix_field(&self, frame: &mut Value, k: &str) {
        if self.grants.function_registration_prefix.is_none() {
            return;
        }
        if let Some(id) = frame.get(k).and_then(Value::as_str) {
            frame[k] = Value::String(iii_core::access::with_prefix(self.prefix(), id));
        }
    }
}

#[cfg(test)]
mod tests;
