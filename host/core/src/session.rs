//! One worker WebSocket session: the read loop, frame dispatch and the writer task.

use iii_protocol::codes;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use iii_protocol::{decode, Kind};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::conn::{Conn, Out, OUTBOUND_QUEUE};
use crate::core::{new_id, Core};

/// Telemetry frames on the worker socket start with one of these (PROTOCOL.md §11); never protocol.
pub fn is_telemetry(b: &[u8]) -> bool {
    b.len() >= 4 && matches!(&b[..4], b"OTLP" | b"MTRC" | b"LOGS")
}

/// Drains the outbound queue into the socket, batching frames that are already queued.
pub async fn writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::Receiver<Out>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(item) = rx.recv().await {
        let mut close = false;
        match item {
            Out::Text(t) => {
                if sink.feed(Message::text(t)).await.is_err() {
                    break;
                }
            }
            Out::Close => close = true,
        }
        while !close {
            match rx.try_recv() {
                Ok(Out::Text(t)) => {
                    if sink.feed(Message::text(t)).await.is_err() {
                        return;
                    }
                }
                Ok(Out::Close) => close = true,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            break;
        }
        if close {
            let _ = sink.close().await;
            break;
        }
    }
}

/// Runs one worker session on an upgraded socket until it closes, then cleans up.
pub async fn run_worker<S>(engine: Core, ws: WebSocketStream<S>, ip: String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let conn = Arc::new(Conn::new(new_id(), new_id(), ip, tx));
    let writer_task = tokio::spawn(writer(sink, rx));
    let _ = conn
        .send(iii_protocol::out::worker_registered(
            &conn.id_str,
            &iii_protocol::format_uuid(conn.token),
        ))
        .await;
    engine.add_conn(conn.clone());
    tracing::info!(worker_id = %conn.id_str, ip = %conn.ip, "worker connected");
    engine.fire_workers_available("worker_connected", &conn.id_str);

    let grace = engine.settings().namespace_grace;
    {
        let (engine, conn) = (engine.clone(), conn.clone());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if !conn.is_closing() {
                engine.namespace_grace_expired(&conn).await;
            }
        });
    }

    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = conn.close_now.notified() => break,
        };
        let msg = match msg {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::debug!(worker_id = %conn.id_str, error = %e, "worker socket error");
                break;
            }
            None => break,
        };
        match msg {
            Message::Text(t) => handle_text(&engine, &conn, t.as_str()).await,
            Message::Binary(b) => {
                if is_telemetry(&b) {
                    continue;
                }
                match std::str::from_utf8(&b) {
                    Ok(t) => handle_text(&engine, &conn, t).await,
                    Err(_) => {
                        tracing::warn!(worker_id = %conn.id_str, "binary frame is neither telemetry nor UTF-8 JSON; dropped")
                    }
                }
            }
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    conn.close();
    engine.cleanup_conn(&conn).await;
    // The writer ends on the queued Close; if the queue was full it may not see it while some
    // task still holds the connection, so do not wait on it forever.
    let abort = writer_task.abort_handle();
    if tokio::time::timeout(std::time::Duration::from_secs(5), writer_task)
        .await
        .is_err()
    {
        abort.abort();
    }
}

async fn handle_text(engine: &Core, conn: &Arc<Conn>, text: &str) {
    if text.trim().is_empty() {
        return;
    }
    let (kind, frame) = match decode(text) {
        Ok(x) => x,
        Err(e) => {
            complain(conn, text, &e).await;
            return;
        }
    };
    if kind.is_registration() {
        let ns = {
            let mut st = conn.state.lock();
            match &st.namespace {
                Some(ns) => ns.clone(),
                None => {
                    st.buffer.push(text.to_string());
                    return;
                }
            }
        };
        apply_decoded(engine, conn, &ns, kind, frame).await;
        return;
    }
    match kind {
        Kind::InvokeFunction => {
            if frame.function_id.as_deref() == Some(iii_protocol::ids::functions::WORKERS_REGISTER)
                && !matches!(frame.action, Some(iii_protocol::Action::Enqueue { .. }))
            {
                // Inline, so that registrations that follow it are applied after the namespace is fixed.
                let data: Value = frame
                    .data
                    .and_then(|d| serde_json::from_str(d.get()).ok())
                    .unwrap_or(Value::Null);
                let res = engine.register_worker(conn, &data).await;
                let reply = !matches!(frame.action, Some(iii_protocol::Action::Void));
                if let (true, Some(id)) = (reply, frame.invocation_id.as_deref()) {
                    let text = res.as_ref().ok().map(Value::to_string);
                    let outcome = match &res {
                        Ok(_) => Ok(text.as_deref()),
                        Err(e) => Err(e),
                    };
                    let _ = conn
                        .send(iii_protocol::out::invocation_result(
                            id,
                            iii_protocol::ids::functions::WORKERS_REGISTER,
                            outcome,
                            None,
                            None,
                        ))
                        .await;
                }
                return;
            }
            engine.invoke_from_worker(conn, frame).await
        }
        Kind::InvocationResult => engine.on_result(conn, frame).await,
        Kind::TriggerRegistrationResult => {
            let sends = engine
                .inner
                .triggers
                .lock()
                .on_registration_result(engine, conn, &frame);
            crate::triggers::deliver(sends).await;
        }
        Kind::Reattach => engine.reattach(conn, &frame).await,
        Kind::Ping => {
            let _ = conn.send(iii_protocol::out::pong()).await;
        }
        _ => {}
    }
}

/// Malformed frames are logged and never kill the connection (PROTOCOL.md §1.3, §14). If the frame
/// was a call with a usable invocation id, the caller also gets a structured error instead of
/// waiting for its timeout.
async fn complain(conn: &Arc<Conn>, text: &str, e: &iii_protocol::DecodeError) {
    let preview: String = text.chars().take(200).collect();
    tracing::warn!(worker_id = %conn.id_str, error = %e, frame = %preview, "malformed frame dropped");
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<String>,
        invocation_id: Option<String>,
        function_id: Option<String>,
    }
    if let Ok(p) = serde_json::from_str::<Probe>(text) {
        if let (Some("invokefunction"), Some(id)) = (p.kind.as_deref(), p.invocation_id.as_deref())
        {
            if iii_protocol::parse_uuid("invocation_id", id).is_ok() {
                let err = iii_protocol::ErrorBody::new(
                    codes::DESERIALIZATION_ERROR,
                    format!("malformed invokefunction frame: {e}"),
                );
                let _ = conn
                    .send(iii_protocol::out::invocation_result(
                        id,
                        p.function_id.as_deref().unwrap_or(""),
                        Err(&err),
                        None,
                        None,
                    ))
                    .await;
            }
        }
    }
}

/// Applies a buffered registration frame once the namespace is known.
pub(crate) async fn apply_registration(engine: &Core, conn: &Arc<Conn>, ns: &str, text: &str) {
    if let Ok((kind, frame)) = decode(text) {
        apply_decoded(engine, conn, ns, kind, frame).await;
    }
}

async fn apply_decoded(
    engine: &Core,
    conn: &Arc<Conn>,
    ns: &str,
    kind: Kind,
    frame: iii_protocol::Frame<'_>,
) {
    match kind {
        Kind::RegisterFunction => engine.register_remote_function(conn, ns, &frame).await,
        Kind::UnregisterFunction => {
            if let Some(id) = frame.id.as_deref() {
                engine.unregister_remote_function(conn, ns, id);
            }
        }
        Kind::RegisterTriggerType => {
            let sends = engine
                .inner
                .triggers
                .lock()
                .register_remote_type(conn, ns, &frame);
            crate::triggers::deliver(sends).await;
        }
        Kind::UnregisterTriggerType => {
            let sends = engine
                .inner
                .triggers
                .lock()
                .unregister_remote_type(engine, conn, ns, &frame);
            crate::triggers::deliver(sends).await;
        }
        Kind::RegisterTrigger => {
            let sends = engine
                .inner
                .triggers
                .lock()
                .register_from_worker(conn, ns, &frame);
            crate::triggers::deliver(sends).await;
        }
        Kind::UnregisterTrigger => {
            if let Some(id) = frame.id.as_deref() {
                let mut sends = Vec::new();
                engine
                    .triggers()
                    .unregister_owned(id, Some(conn.id), false, &mut sends);
                crate::triggers::deliver(sends).await;
            }
        }
        Kind::RegisterService => {}
        _ => {}
    }
}
