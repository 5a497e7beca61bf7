//! The self-hostable registry server (`iii registry serve <dir>`): the plugin index over HTTP
//! and upstream's worker registry API (`POST /resolve`, `GET /download/<name>`, workers-and-
//! sandboxes spec section 3.1), both from one [`IndexDir`], so `iii worker add` and
//! `iii plugin add` resolve against it through `III_API_URL`.
//!
//! | request | answer |
//! |---|---|
//! | `GET /v1/plugins?q=<text>` | newest record of each matching plugin |
//! | `GET /v1/plugins/<ns:name>` | every version, oldest first (404 when unknown) |
//! | `GET /v1/resolve/<ns:name>?range=<r>&pre=true` | the record the range resolves to |
//! | `PUT /v1/plugins` | adds or replaces a record (body: the record) |
//! | `POST /resolve` | the worker graph for `{worker, version}` |
//! | `GET /download/<name>?version=<v>` | the legacy single-worker answer (204: engine worker) |
//!
//! Artifacts are not served here: records point at an OCI registry.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::record::IndexRecord;
use crate::resolve::parse_ref;
use crate::store::{IndexDir, StoreError};

/// Largest request body accepted (a record is a few KiB).
const MAX_BODY: usize = 1 << 20;

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Resp {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts")
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> Resp {
    reply(status, json!({"error": msg.to_string()}))
}

fn store_error(e: StoreError) -> Resp {
    match e {
        StoreError::Record(_) | StoreError::Resolve(_) => error(StatusCode::BAD_REQUEST, e),
        _ => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            q.split('&')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    Some((decode(k)?, decode(v)?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = b.get(i + 1..i + 3)?;
                let h = std::str::from_utf8(h).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The legacy `/download/<name>` answer derived from a graph's root node; `None` for an engine
/// worker (204).
fn legacy_download(graph: &Value) -> Option<Value> {
    let root = graph["root"]["name"].as_str()?;
    let node = graph["graph"]
        .as_array()?
        .iter()
        .find(|n| n["name"].as_str() == Some(root))?;
    let (name, version) = (node["name"].clone(), node["version"].clone());
    match node["type"].as_str()? {
        "binary" => {
            let mut v = json!({"type": "binary", "name": name, "version": version, "binaries": node["binaries"]});
            if !node["config"].is_null() {
                v["config"] = json!({"name": name, "config": node["config"]});
            }
            Some(v)
        }
        "image" => Some(
            json!({"type": "image", "name": name, "version": version, "image_url": node["image"]}),
        ),
        "bundle" => Some(json!({"type": "bundle", "name": name, "version": version,
            "archive_url": node["archive_url"], "sha256": node["sha256"]})),
        _ => None,
    }
}

async fn handle(index: Arc<IndexDir>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let param = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let method = req.method().clone();
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/v1/plugins") => match index.search(&param("q").unwrap_or_default()) {
            Ok(r) => reply(StatusCode::OK, json!(r)),
            Err(e) => store_error(e),
        },
        (&Method::GET, p) if p.starts_with("/v1/plugins/") => {
            let name = decode(&p["/v1/plugins/".len()..]).unwrap_or_default();
            match index.versions(&name) {
                Ok(v) if v.is_empty() => error(
                    StatusCode::NOT_FOUND,
                    format!("plugin {name} is not in the index"),
                ),
                Ok(v) => reply(StatusCode::OK, json!(v)),
                Err(e) => store_error(e),
            }
        }
        (&Method::GET, p) if p.starts_with("/v1/resolve/") => {
            let name = decode(&p["/v1/resolve/".len()..]).unwrap_or_default();
            let reference = match param("range") {
                Some(r) if !r.is_empty() => format!("{name}@{r}"),
                _ => name,
            };
            let pre = param("pre").as_deref() == Some("true");
            match parse_ref(&reference)
                .map_err(StoreError::from)
                .and_then(|r| index.resolve(&r, pre))
            {
                Ok(r) => reply(StatusCode::OK, json!(r)),
                Err(StoreError::Resolve(e @ crate::ResolveError::Unknown(_))) => {
                    error(StatusCode::NOT_FOUND, e)
                }
                Err(StoreError::Resolve(e @ crate::ResolveError::NoMatch { .. })) => {
                    error(StatusCode::NOT_FOUND, e)
                }
                Err(e) => store_error(e),
            }
        }
        (&Method::PUT, "/v1/plugins") => match read_json::<IndexRecord>(req).await {
            Ok(rec) => match index.put(&rec) {
                Ok(replaced) => reply(
                    if replaced {
                        StatusCode::OK
                    } else {
                        StatusCode::CREATED
                    },
                    json!({"name": rec.name, "version": rec.version, "replaced": replaced}),
                ),
                Err(e) => store_error(e),
            },
            Err(r) => r,
        },
        (&Method::POST, "/resolve") => match read_json::<Value>(req).await {
            Ok(body) => {
                let worker = body["worker"].as_str().unwrap_or("");
                let version = body["version"].as_str().unwrap_or("latest");
                match index.worker_resolve(worker, version) {
                    Ok(Some(g)) => reply(StatusCode::OK, g),
                    Ok(None) => error(StatusCode::NOT_FOUND, "worker not found"),
                    Err(e) => store_error(e),
                }
            }
            Err(r) => r,
        },
        (&Method::GET, p) if p.starts_with("/download/") => {
            let name = decode(&p["/download/".len()..]).unwrap_or_default();
            let version = param("version").unwrap_or_else(|| "latest".into());
            match index.worker_resolve(&name, &version) {
                Ok(Some(g)) => match legacy_download(&g) {
                    Some(v) => reply(StatusCode::OK, v),
                    None => Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Full::new(Bytes::new()))
                        .expect("static response parts"),
                },
                Ok(None) => error(StatusCode::NOT_FOUND, "worker not found"),
                Err(e) => store_error(e),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no route for {method} {path}"),
        ),
    };
    Ok(resp)
}

async fn read_json<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Resp> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::PAYLOAD_TOO_LARGE, format!("request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("request body: {e}")))
}

/// Serves `index` on `listener` until the task is dropped.
pub async fn serve(index: IndexDir, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let index = Arc::new(index);
    loop {
        let (stream, _) = listener.accept().await?;
        let index = index.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(index.clone(), req));
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await
            {
                tracing::debug!("registry connection: {e}");
            }
        });
    }
}

/// Binds `addr` and returns the bound address with the serving future.
pub async fn bind(
    index: IndexDir,
    addr: SocketAddr,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(index, listener)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_query_components() {
        assert_eq!(decode("iii%3Aredis").unwrap(), "iii:redis");
        assert_eq!(decode("a+b").unwrap(), "a b");
        assert_eq!(decode("%5E0.1").unwrap(), "^0.1");
        assert!(decode("%zz").is_none());
        assert!(decode("%4").is_none());
    }

    #[test]
    fn legacy_answers_from_graph_roots() {
        let g = json!({"root": {"name": "todo", "version": "0.1.0"}, "graph": [
            {"name": "todo", "type": "image", "version": "0.1.0", "image": "r/todo@sha256:ab"}]});
        assert_eq!(
            legacy_download(&g).unwrap(),
            json!({"type": "image", "name": "todo", "version": "0.1.0", "image_url": "r/todo@sha256:ab"})
        );
        let e = json!({"root": {"name": "e", "version": "1.0.0"}, "graph": [{"name": "e", "type": "engine", "version": "1.0.0"}]});
        assert!(legacy_download(&e).is_none());
    }
}
