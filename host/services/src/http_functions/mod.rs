//! HTTP-invoked functions (PROTOCOL.md §3.10), config entry `iii-http-functions`: a worker
//! registers a function with an `invocation` object instead of serving it, and the engine
//! serves each call by calling that URL.
//!
//! The service installs an [`InvocationProvider`] in the core. At registration it checks the
//! URL against the entry's `security` policy ([`security`]) and reads the auth variables from
//! the engine's environment ([`spec`]); the host's addresses are checked off the worker's read
//! loop, and again on every connection the client opens ([`client`]). The core registers the
//! handler as the worker's: listed under its name, removed with it.

pub mod client;
pub mod security;
pub mod spec;

use std::sync::Arc;

use iii_core::config::ConfigError;
use iii_core::invocation::{BuiltInvocation, InvocationProvider, InvocationTarget};
use iii_core::{
    BuiltinFn, Configured, Entry, PrepareCx, Prepared, Registrar, Reply, Service, ServiceInfo,
    StartError,
};
use iii_protocol::{codes, ErrorBody};
use serde_json::Value;

use security::Security;

/// The HTTP-invoked functions service.
pub struct HttpFunctions;

/// What the `iii-http-functions` entry configured.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpFunctionsConfig {
    /// The URL policy.
    pub security: Security,
}

const NAME: &str = "iii-http-functions";

impl Service for HttpFunctions {
    fn info(&self) -> ServiceInfo {
        ServiceInfo {
            name: NAME,
            worker: NAME,
            deprecated_names: &[],
            repeatable: false,
            always_on: false,
        }
    }

    fn configure(&self, entries: &[Entry<'_>]) -> Result<Box<dyn Configured>, ConfigError> {
        let mut cfg = HttpFunctionsConfig::default();
        let Some(e) = entries.first() else {
            return Ok(Box::new(cfg));
        };
        let at = e.key("config");
        let Some(m) = e.reader.mapping(e.config, &at)? else {
            return Ok(Box::new(cfg));
        };
        e.reader.check_keys(m, &at, &["security"])?;
        let sec_at = format!("{at}.security");
        if let Some(s) = m.get("security") {
            if let Some(s) = e.reader.mapping(s, &sec_at)? {
                e.reader.check_keys(
                    s,
                    &sec_at,
                    &["url_allowlist", "block_private_ips", "require_https"],
                )?;
                let sec = &mut cfg.security;
                if let Some(v) = s.get("url_allowlist") {
                    let key = format!("{sec_at}.url_allowlist");
                    sec.url_allowlist = e.reader.string_list(v, &key)?;
                    if sec.url_allowlist.iter().any(|g| g.trim().is_empty()) {
                        return Err(e.reader.error(format!(
                            "`{key}`: an entry is empty; write host globs such as `*.example.com`, or `*` for any host"
                        )));
                    }
                }
                if let Some(v) = s.get("block_private_ips") {
                    sec.block_private_ips =
                        e.reader.bool(v, &format!("{sec_at}.block_private_ips"))?;
                }
                if let Some(v) = s.get("require_https") {
                    sec.require_https = e.reader.bool(v, &format!("{sec_at}.require_https"))?;
                }
            }
        }
        Ok(Box::new(cfg))
    }
}

#[async_trait::async_trait]
impl Configured for HttpFunctionsConfig {
    async fn prepare(
        self: Box<Self>,
        _cx: &mut PrepareCx<'_>,
    ) -> Result<Box<dyn Prepared>, StartError> {
        let client = client::build_client(&self.security).map_err(|e| StartError::Service {
            service: NAME,
            message: e.to_string(),
        })?;
        let s = &self.security;
        if !s.block_private_ips || !s.require_https {
            tracing::warn!(
                block_private_ips = s.block_private_ips,
                require_https = s.require_https,
                "iii-http-functions: workers may make the engine call {} URLs",
                if s.block_private_ips {
                    "plain-http"
                } else {
                    "private-network"
                }
            );
        }
        Ok(Box::new(Provider {
            security: self.security,
            client,
        }))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Builds the handlers. One client (one connection pool) for every function.
#[derive(Clone)]
struct Provider {
    security: Security,
    client: reqwest::Client,
}

impl Prepared for Provider {
    fn install(&mut self, reg: &mut Registrar<'_>) {
        reg.invocation_provider(Arc::new(self.clone()));
    }
}

impl InvocationProvider for Provider {
    fn build(
        &self,
        target: InvocationTarget<'_>,
        invocation: &Value,
    ) -> Result<BuiltInvocation, ErrorBody> {
        let env = |k: &str| std::env::var(k);
        let inv = Arc::new(spec::parse(
            target.function_id,
            invocation,
            &self.security,
            &env,
        )?);
        tracing::info!(function_id = target.function_id, namespace = target.namespace, worker_id = target.worker_id, method = %inv.method, url = %inv.url, "HTTP-invoked function accepted");
        let verify = {
            let (security, url) = (self.security.clone(), inv.url.clone());
            let function_id = target.function_id.to_string();
            Box::pin(async move {
                client::verify_host(&security, &url).await.map_err(|e| {
                    ErrorBody::new(
                        codes::URL_VALIDATION_FAILED,
                        format!("`invocation.url` of `{function_id}` refused: {e}"),
                    )
                })
            })
        };
        let (client, security) = (self.client.clone(), self.security.clone());
        let handler: BuiltinFn = Arc::new(move |_core, ctx, data| {
            let (client, security, inv) = (client.clone(), security.clone(), inv.clone());
            Box::pin(async move {
                client::call(&client, &security, &inv, &ctx.function_id, &data)
                    .await
                    .map(Reply::Value)
            })
        });
        Ok(BuiltInvocation {
            handler,
            verify: Some(verify),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iii_core::config::EntryReader;

    fn configure(yaml: &str) -> Result<HttpFunctionsConfig, ConfigError> {
        let v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let e = Entry {
            at: "workers[1](iii-http-functions)".into(),
            name: NAME,
            config: &v,
            reader: EntryReader {
                path: "config.yaml",
            },
        };
        let c = HttpFunctions.configure(&[e])?;
        Ok(c.as_any()
            .downcast_ref::<HttpFunctionsConfig>()
            .unwrap()
            .clone())
    }

    #[test]
    fn defaults_are_strict_and_every_key_is_read() {
        assert_eq!(configure("null").unwrap().security, Security::default());
        let d = Security::default();
        assert_eq!(
            (d.url_allowlist, d.block_private_ips, d.require_https),
            (vec!["*".to_string()], true, true)
        );
        let c = configure(
            "security: {url_allowlist: ['*.example.com', api.partner.io], block_private_ips: false, require_https: false}",
        )
        .unwrap();
        assert_eq!(
            c.security,
            Security {
                url_allowlist: vec!["*.example.com".into(), "api.partner.io".into()],
                block_private_ips: false,
                require_https: false,
            }
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_refused_with_their_path() {
        let e = configure("securty: {}").unwrap_err().to_string();
        assert!(
            e.contains("workers[1](iii-http-functions).config.securty"),
            "{e}"
        );
        let e = configure("security: {allowlist: ['*']}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.security.allowlist"), "{e}");
        assert!(
            e.contains("url_allowlist, block_private_ips, require_https"),
            "{e}"
        );
        let e = configure("security: {require_https: 'no'}")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.security.require_https") && e.contains("true or false"),
            "{e}"
        );
        let e = configure("security: {url_allowlist: '*'}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a list of strings"), "{e}");
        let e = configure("security: {url_allowlist: ['']}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("an entry is empty"), "{e}");
    }
}
