//! The `iii-bridge` worker (spec section 5.5, 7.4): this engine as a worker of another one.
//! `expose` serves local functions to the remote engine, `forward` makes remote functions
//! callable here under a local id, and `bridge.invoke` / `bridge.invoke_async` call any remote
//! function. The connection reconnects with backoff and re-registers what it exposes.

use std::sync::Arc;
use std::time::Duration;

use iii_core::config::ConfigError;
use iii_core::{
    BoxFut, CancellationToken, Configured, Core, Entry, FunctionSpec, PrepareCx, Prepared,
    Registrar, Service, ServiceInfo, StartError,
};
use iii_engine_client::{Client, ClientError, Handler, Options};
use iii_protocol::{codes, ErrorBody};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// The default remote URL (spec section 7.4) when neither `url` nor `III_URL` is set.
const DEFAULT_URL: &str = "ws://0.0.0.0:49134";
/// `bridge.invoke` and forwarded calls wait this long unless told otherwise.
const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The bridge worker service.
pub struct Bridge;

/// One `expose` entry: serve `local_function` to the remote engine as `remote_function`.
#[derive(Debug, Clone, PartialEq)]
pub struct Expose {
    /// The function on this engine.
    pub local_function: String,
    /// Its id on the remote engine (the local id when absent).
    pub remote_function: String,
}

/// One `forward` entry: `local_function` here calls `remote_function` there.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// The id registered on this engine.
    pub local_function: String,
    /// The function called on the remote engine.
    pub remote_function: String,
    /// How long a forwarded call may take.
    pub timeout_ms: u64,
}

/// What the `iii-bridge` entry configured.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgeConfig {
    /// The remote engine's worker socket.
    pub url: String,
    /// Local functions served to the remote engine.
    pub expose: Vec<Expose>,
    /// Remote functions served here.
    pub forward: Vec<Forward>,
}

impl Service for Bridge {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: "iii-bridge",
            worker: "iii-bridge",
            deprecated_names: &[],
            repeatable: false,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let env_url = std::env::var("III_URL").ok().filter(|u| !u.is_empty());
        let mut bc = BridgeConfig {
            url: env_url.unwrap_or_else(|| DEFAULT_URL.to_string()),
            expose: Vec::new(),
            forward: Vec::new(),
        };
        let Some(e) = entries.first() else {
            return Ok(Box::new(bc));
        };
        let at = e.key("config");
        let r = &e.reader;
        if let Some(m) = r.mapping(e.config, &at)? {
            r.check_keys(m, &at, &["url", "expose", "forward"])?;
            if let Some(u) = m.get("url") {
                bc.url = r.string(u, &format!("{at}.url"))?;
            }
            let list = |key: &str| -> Result<Vec<(String, serde_yaml::Mapping)>, ConfigError> {
                let Some(v) = m.get(key).filter(|v| !v.is_null()) else {
                    return Ok(Vec::new());
                };
                let serde_yaml::Value::Sequence(items) = v else {
                    return Err(r.invalid(&format!("{at}.{key}"), "a list", v));
                };
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let ik = format!("{at}.{key}[{i}]");
                    let Some(im) = r.mapping(item, &ik)? else {
                        return Err(r.invalid(&ik, "a mapping", item));
                    };
                    out.push((ik, im.clone()));
                }
                Ok(out)
            };
            for (ik, im) in list("expose")? {
                r.check_keys(&im, &ik, &["local_function", "remote_function"])?;
                let local = required(r, &im, &ik, "local_function")?;
                let remote = match im.get("remote_function") {
                    Some(v) => r.string(v, &format!("{ik}.remote_function"))?,
                    None => local.clone(),
                };
                bc.expose.push(Expose {
                    local_function: local,
                    remote_function: remote,
                });
            }
            for (ik, im) in list("forward")? {
                r.check_keys(
                    &im,
                    &ik,
                    &["local_function", "remote_function", "timeout_ms"],
                )?;
                let timeout_ms = match im.get("timeout_ms") {
                    Some(v) => r.u64(v, &format!("{ik}.timeout_ms"))?.max(1),
                    None => DEFAULT_TIMEOUT_MS,
                };
                bc.forward.push(Forward {
                    local_function: required(r, &im, &ik, "local_function")?,
                    remote_function: required(r, &im, &ik, "remote_function")?,
                    timeout_ms,
                });
            }
        }
        crate::bridge::check_ws_url(&bc.url)
            .map_err(|x| r.error(format!("`{at}.url` (or III_URL): {x}")))?;
        Ok(Box::new(bc))
    }
}

fn required(
    r: &iii_core::config::EntryReader<'_>,
    m: &serde_yaml::Mapping,
    at: &str,
    key: &str,
) -> Result<String, ConfigError> {
    match m.get(key) {
        Some(v) => {
            let s = r.string(v, &format!("{at}.{key}"))?;
            if s.is_empty() {
                return Err(r.invalid(&format!("{at}.{key}"), "a function id", v));
            }
            Ok(s)
        }
        None => Err(r.error(format!("`{at}.{key}` is required"))),
    }
}

#[async_trait::async_trait]
impl Configured for BridgeConfig {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let client = Client::start(
            &self.url,
            Options {
                worker_name: "iii-bridge".into(),
                ..Options::default()
            },
        );
        tracing::info!(url = %self.url, expose = self.expose.len(), forward = self.forward.len(), "iii-bridge connecting to the remote engine");
        Ok(Box::new(Running {
            client,
            config: *self,
        }))
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

struct Running {
    client: Client,
    config: BridgeConfig,
}

#[derive(Deserialize, JsonSchema)]
struct InvokeIn {
    /// The function on the remote engine.
    function_id: String,
    /// Its input.
    #[serde(default)]
    data: Value,
    /// How long to wait for the result (30000).
    timeout_ms: Option<u64>,
}

/// A client failure as the `bridge_error` of spec section 5.5; a remote error's own code and
/// message are kept in `details`.
fn bridge_error(e: ClientError) -> ErrorBody {
    let mut body = ErrorBody::new(codes::BRIDGE_ERROR, e.to_string());
    if let ClientError::Remote(remote) = &e {
        body.details = serde_json::to_value(remote).ok();
    }
    body
}

fn raw_result(v: Option<Value>) -> Value {
    v.unwrap_or(Value::Null)
}

impl Prepared for Running {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        let c = self.client.clone();
        reg.function(FunctionSpec::typed(
            "bridge.invoke",
            "Call a function on the remote engine and wait for its result",
            move |_core, _ctx, i: InvokeIn| {
                let c = c.clone();
                async move {
                    let t =
                        Duration::from_millis(i.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS).max(1));
                    c.invoke(&i.function_id, i.data, t)
                        .await
                        .map(raw_result)
                        .map_err(bridge_error)
                }
            },
        ));
        let c = self.client.clone();
        reg.function(FunctionSpec::typed(
            "bridge.invoke_async",
            "Call a function on the remote engine without waiting (fire and forget)",
            move |_core, _ctx, i: InvokeIn| {
                let c = c.clone();
                async move {
                    c.invoke_void(&i.function_id, i.data)
                        .map(|_| Value::Null)
                        .map_err(bridge_error)
                }
            },
        ));
        for f in &self.config.forward {
            let c = self.client.clone();
            let remote = f.remote_function.clone();
            let t = Duration::from_millis(f.timeout_ms);
            reg.function(FunctionSpec::raw(
                f.local_function.clone(),
                format!("Forwarded to `{}` on the remote engine", f.remote_function),
                move |_core, _ctx, data: Value| {
                    let (c, remote) = (c.clone(), remote.clone());
                    async move {
                        c.invoke(&remote, data, t)
                            .await
                            .map(raw_result)
                            .map_err(bridge_error)
                    }
                },
            ));
        }
    }

    fn run(self: Box<Self>, core: Core, stop: CancellationToken) -> Option<BoxFut<()>> {
        for e in &self.config.expose {
            let local = e.local_function.clone();
            let weak = core.downgrade();
            let handler: Handler = Arc::new(move |mut data: Value| {
                // The remote engine names its caller by a worker id that means nothing here.
                if let Some(m) = data.as_object_mut() {
                    m.remove(iii_protocol::ids::CALLER_WORKER_ID_KEY);
                }
                let (local, weak) = (local.clone(), weak.clone());
                Box::pin(async move {
                    let Some(core) = weak.upgrade() else {
                        return Err(iii_core::stopped());
                    };
                    let r = core
                        .call("default", &local, &data.to_string(), None, None)
                        .await?;
                    Ok(r.and_then(|raw| serde_json::from_str(raw.get()).ok())
                        .unwrap_or(Value::Null))
                })
            });
            self.client.register_function(
                &e.remote_function,
                json!({"description": format!("Exposed by a bridged engine (its `{}`)", e.local_function)}),
                handler,
            );
        }
        let client = self.client;
        // The connection lives as long as the service; stopping drops the last handle.
        Some(Box::pin(async move {
            stop.cancelled().await;
            drop(client);
        }))
    }
}
