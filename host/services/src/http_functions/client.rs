//! One call of an HTTP-invoked function (PROTOCOL.md §3.10): the request (body, `x-iii-*`
//! headers, configured headers, auth), and the response mapped to a result or a structured
//! error. The client follows no redirects, uses no proxy, and, when private addresses are
//! blocked, connects only to addresses its resolver checked ([`GuardedResolver`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use iii_protocol::{codes, ErrorBody};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::Sha256;

use super::security::{host_of, literal_ip, Refused, Security};
use super::spec::{Auth, Invocation, MAX_TIMEOUT};

/// The largest response body read; a larger one fails the call (`http_response_failed`).
/// It matches the largest frame a worker accepts by default.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why the client could not build.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// Builds the client every function of the service shares (one connection pool).
pub fn build_client(security: &Security) -> Result<reqwest::Client, ClientError> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(MAX_TIMEOUT)
        .user_agent(concat!("iii-engine/", env!("CARGO_PKG_VERSION")));
    if security.block_private_ips {
        b = b.dns_resolver(Arc::new(GuardedResolver {
            security: security.clone(),
        }));
    }
    Ok(b.build()?)
}

/// Resolves a host for the client and refuses it when any address is blocked: the addresses
/// it returns are the ones the connection is made to, so there is no gap between the check
/// and the connect for a rebinding DNS server to use.
struct GuardedResolver {
    security: Security,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let security = self.security.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let checked = security.check_resolved(&host, addrs)?;
            let addrs: Addrs = Box::new(checked.into_iter());
            Ok(addrs)
        })
    }
}

/// Resolves the URL's host now, for the registration-time check. A blocked address refuses;
/// a failed lookup does not (the host may resolve later, and every call checks again).
pub async fn verify_host(security: &Security, url: &reqwest::Url) -> Result<(), Refused> {
    if !security.block_private_ips || literal_ip(url).is_some() {
        return Ok(());
    }
    let Some(host) = host_of(url) else {
        return Ok(());
    };
    // A domain (an address literal returned above), so `host:0` parses.
    let lookup = tokio::net::lookup_host(format!("{host}:0"));
    match tokio::time::timeout(super::security::RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => security.check_resolved(&host, addrs).map(drop),
        Ok(Err(e)) => {
            tracing::warn!(host = %host, error = %e, "HTTP-invoked function: host does not resolve now; each call resolves and checks it again");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(host = %host, "HTTP-invoked function: host lookup took over 5 s; each call resolves and checks it again");
            Ok(())
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>:<base64(body)>")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b":");
    mac.update(
        base64::engine::general_purpose::STANDARD
            .encode(body)
            .as_bytes(),
    );
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + tag.len() * 2);
    out.push_str("sha256=");
    for b in tag {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Calls `inv` for `function_id` with `data` and maps the answer (§3.10).
pub async fn call(
    client: &reqwest::Client,
    security: &Security,
    inv: &Invocation,
    function_id: &str,
    data: &Value,
) -> Result<Value, ErrorBody> {
    // An address literal is not resolved, so the resolver never sees it: check it here.
    if let (Some(ip), Some(host)) = (literal_ip(&inv.url), host_of(&inv.url)) {
        security
            .check_ip(&host, ip, "is")
            .map_err(|e| ErrorBody::new(codes::URL_VALIDATION_FAILED, e.to_string()))?;
    }
    let body = serde_json::to_vec(data).map_err(|e| {
        ErrorBody::new(
            codes::SERIALIZATION_ERROR,
            format!("cannot serialise the input of {function_id}: {e}"),
        )
    })?;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let invocation_id = uuid::Uuid::new_v4().to_string();
    let mut req = client
        .request(inv.method.clone(), inv.url.clone())
        .timeout(inv.timeout)
        .header(CONTENT_TYPE, "application/json")
        .header("x-iii-function-path", header(function_id))
        .header("x-iii-invocation-id", header(&invocation_id))
        .header("x-iii-timestamp", timestamp.to_string());
    for (k, v) in &inv.headers {
        req = req.header(k, v);
    }
    req = match &inv.auth {
        None => req,
        Some(Auth::Bearer { value }) => req.header(reqwest::header::AUTHORIZATION, value),
        Some(Auth::ApiKey { header, value }) => req.header(header, value),
        Some(Auth::Hmac { secret }) => req.header(
            HeaderName::from_static("x-iii-signature"),
            signature(secret, timestamp, &body),
        ),
    };
    let started = std::time::Instant::now();
    let resp = req
        .body(body)
        .send()
        .await
        .map_err(|e| transport_error(&e, inv, started.elapsed()))?;
    let status = resp.status();
    let bytes = read_body(resp, inv, started).await?;
    tracing::debug!(function_id, invocation_id = %invocation_id, status = status.as_u16(), bytes = bytes.len(), "HTTP-invoked function answered");
    map_response(status, &bytes)
}

/// A function id is any string the worker chose; one a header cannot carry is sent
/// percent-encoded rather than failing the call.
fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let enc = percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC);
        HeaderValue::from_str(&enc.to_string()).unwrap_or(HeaderValue::from_static(""))
    })
}

async fn read_body(
    mut resp: reqwest::Response,
    inv: &Invocation,
    started: std::time::Instant,
) -> Result<Vec<u8>, ErrorBody> {
    let mut buf = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(ErrorBody::new(
                        codes::HTTP_RESPONSE_FAILED,
                        format!(
                            "the response of {} {} is larger than {MAX_RESPONSE_BYTES} bytes",
                            inv.method, inv.url
                        ),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf),
            Err(e) if e.is_timeout() => return Err(timeout(inv, started.elapsed())),
            Err(e) => {
                return Err(ErrorBody::new(
                    codes::HTTP_RESPONSE_FAILED,
                    format!(
                        "reading the response of {} {} failed: {}",
                        inv.method,
                        inv.url,
                        chain(&e)
                    ),
                ))
            }
        }
    }
}

fn timeout(inv: &Invocation, after: Duration) -> ErrorBody {
    ErrorBody::new(
        codes::HTTP_REQUEST_TIMEOUT,
        format!(
            "{} {} did not answer within its timeout of {} ms (after {} ms)",
            inv.method,
            inv.url,
            inv.timeout.as_millis(),
            after.as_millis()
        ),
    )
}

fn transport_error(e: &reqwest::Error, inv: &Invocation, after: Duration) -> ErrorBody {
    if e.is_timeout() {
        return timeout(inv, after);
    }
    // The resolver's refusal travels as the connect error's source.
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return ErrorBody::new(codes::URL_VALIDATION_FAILED, r.to_string());
        }
        src = s.source();
    }
    ErrorBody::new(
        codes::HTTP_REQUEST_FAILED,
        format!("{} {} failed: {}", inv.method, inv.url, chain(e)),
    )
}

/// An error and its causes, `a: b: c` (reqwest's own message rarely says why).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

/// Maps a status and body to the call's outcome (§3.10).
pub fn map_response(status: StatusCode, body: &[u8]) -> Result<Value, ErrorBody> {
    let blank = body.iter().all(u8::is_ascii_whitespace);
    let json = || serde_json::from_slice::<Value>(body);
    if status.is_success() {
        if blank {
            return Ok(Value::Null);
        }
        return json().map_err(|e| {
            ErrorBody::new(
                codes::INVALID_RESPONSE,
                format!("HTTP {} response body is not JSON: {e}", status.as_u16()),
            )
        });
    }
    if status.is_client_error() || status.is_server_error() {
        if let Ok(v) = json() {
            if let Some(code) = v.pointer("/error/code").and_then(Value::as_str) {
                let message = v
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .map_or_else(|| status_line(status), str::to_string);
                return Err(ErrorBody::new(code, message));
            }
        }
        return Err(ErrorBody::new(codes::HTTP_ERROR, status_line(status)));
    }
    // 1xx and 3xx count as success; the body is the result when it is JSON.
    Ok(if blank {
        Value::Null
    } else {
        json().unwrap_or(Value::Null)
    })
}

fn status_line(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(r) => format!("HTTP {} {r}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_and_base64_body() {
        // Computed independently (Python: hmac.new(b"s3cret", b"1700000000:" +
        // base64.b64encode(b'{"a":1}'), sha256).hexdigest()).
        assert_eq!(
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=ef70ecc409d280b3ed0a97fdb005b95bcea1b1c20e8984d0a9d92dcd79d1f077"
        );
        assert_ne!(
            signature(b"s3cret", 1_700_000_001, br#"{"a":1}"#),
            signature(b"s3cret", 1_700_000_000, br#"{"a":1}"#)
        );
    }

    #[tokio::test]
    async fn a_host_resolving_to_loopback_is_refused_before_any_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let security = Security {
            require_https: false,
            ..Security::default()
        };
        let client = build_client(&security).unwrap();
        // `localhost` passes the URL check (a name) and fails in the client's resolver.
        let inv = super::super::spec::parse(
            "f::x",
            &json!({"url": format!("http://localhost:{port}/x")}),
            &security,
            &|_| Err(std::env::VarError::NotPresent),
        )
        .unwrap();
        let e = call(&client, &security, &inv, "f::x", &json!({}))
            .await
            .unwrap_err();
        assert_eq!(e.code, "url_validation_failed", "{e}");
        assert!(
            e.message.contains("resolves to") && e.message.contains("loopback"),
            "{e}"
        );
        // Nothing connected: the refusal came before the connect.
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(
            accepted.is_err(),
            "the client connected to a blocked address"
        );
        // The registration-time check says the same.
        let v = verify_host(&security, &inv.url).await.unwrap_err();
        assert!(matches!(v, Refused::Blocked { .. }), "{v}");
    }

    #[test]
    fn responses_map_to_results_and_errors() {
        let ok = |s: u16, b: &str| map_response(StatusCode::from_u16(s).unwrap(), b.as_bytes());
        assert_eq!(ok(200, ""), Ok(Value::Null));
        assert_eq!(ok(204, "  \n"), Ok(Value::Null));
        assert_eq!(ok(200, r#"{"c":3}"#), Ok(json!({"c": 3})));
        assert_eq!(ok(201, "7"), Ok(json!(7)));
        let e = ok(200, "<html>").unwrap_err();
        assert_eq!(e.code, "invalid_response");
        assert_eq!(ok(302, r#"{"moved":true}"#), Ok(json!({"moved": true})));
        assert_eq!(ok(301, "see other"), Ok(Value::Null));
        assert_eq!(
            ok(
                422,
                r#"{"error":{"code":"bad_input","message":"a is required"}}"#
            ),
            Err(ErrorBody::new("bad_input", "a is required"))
        );
        assert_eq!(
            ok(409, r#"{"error":{"code":"conflict"}}"#),
            Err(ErrorBody::new("conflict", "HTTP 409 Conflict"))
        );
        assert_eq!(
            ok(500, "oops"),
            Err(ErrorBody::new(
                "http_error",
                "HTTP 500 Internal Server Error"
            ))
        );
        assert_eq!(
            ok(404, r#"{"error":"nope"}"#),
            Err(ErrorBody::new("http_error", "HTTP 404 Not Found"))
        );
        assert_eq!(ok(599, ""), Err(ErrorBody::new("http_error", "HTTP 599")));
    }
}
