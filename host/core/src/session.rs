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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use crate::access::{Registration, SessionAccess};
use crate::conn::{Conn, Out};
use crate::core::{new_id, Core, DEFAULT_NS};
use crate::limits::{ConnLimits, REGISTRATION_LIMIT_EXCEEDED};
use crate::validation::PayloadValidator;

/// Window over which malformed-frame warnings are counted per connection.
const MALFORMED_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Telemetry frames on the worker socket start with one of these (PROTOCOL.md §11); never protocol.
pub fn is_telemetry(b: &[u8]) -> bool {
    b.len() >= 4 && matches!(&b[..4], b"OTLP" | b"MTRC" | b"LOGS")
}

/// Drains the outbound queue into the socket, batching frames that are already queued, and
/// counts the bytes it hands to the socket off `queued`.
pub async fn writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut next = rx.recv().await;
    while let Some(item) = next.take() {
        match item {
            Out::Text(t) => {
                let n = t.len();
                let fed = sink.feed(Message::text(t)).await;
                queued.fetch_sub(n, Ordering::SeqCst);
                if fed.is_err() {
                    return;
                }
            }
            Out::Close => {
                let _ = sink.close().await;
                return;
            }
            Out::CloseWith(code, reason) => {
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                return;
            }
        }
        match rx.try_recv() {
            Ok(item) => next = Some(item),
            Err(_) => {
                if sink.flush().await.is_err() {
                    return;
                }
                forget_write_waker(&mut sink);
                next = rx.recv().await;
            }
        }
    }
}

/// Leaves a no-op waker where the flush just registered the writer's own.
///
/// tokio-tungstenite wakes the sink's last waker whenever the socket becomes readable (a read
/// may have to write, e.g. a pong). Left in place, every incoming frame would wake this idle
/// writer as well as the reader: two tasks per event, so the runtime wakes a second worker
/// thread to take one, and at low concurrency that cross-thread wake-up costs more than the
/// frame itself. Flushing an empty buffer does no I/O; when the writer next has to wait on the
/// socket, its own poll registers it again.
fn forget_write_waker<S>(sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let _ = sink.poll_flush_unpin(&mut cx);
}

/// Runs one worker session on an upgraded socket until it closes, then cleans up.
pub async fn run_worker<S>(
    engine: Core,
    ws: WebSocketStream<S>,
    ip: String,
    limits: Arc<ConnLimits>,
    access: Option<Arc<dyn SessionAccess>>,
    validator: Option<Arc<dyn PayloadValidator>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let conn = Arc::new(Conn::with_limits(
        new_id(),
        new_id(),
        ip,
        tx,
        queued.clone(),
        limits,
    ));
    if let Some(a) = access {
        conn.set_access(a);
    }
    if let Some(v) = validator {
        conn.set_validator(v);
    }
    let writer_task = tokio::spawn(writer(sink, rx, queued));
    let _ = conn
        .send(iii_protocol::out::worker_registered(
            &conn.id_str,
            &iii_protocol::format_uuid(conn.token),
        ))
        .await;
    engine.add_conn(conn.clone());
    // Debug, not info: most connections are one-shot anonymous clients (`iii trigger`); a real
    // worker announces itself with "worker registered" at info.
    tracing::debug!(worker_id = %conn.id_str, ip = %conn.ip, "worker connected");
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
                protocol_error_close(&conn, &e);
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
                        if should_log_malformed(&conn) {
                            tracing::warn!(worker_id = %conn.id_str, "binary frame is neither telemetry nor UTF-8 JSON; dropped")
                        }
                    }
                }
            }
            Message::Close(_) => break,
            // Pings are answered by the WebSocket layer itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    conn.close();
    let unlogged = take_unlogged_malformed(&conn);
    if unlogged > 0 {
        tracing::warn!(worker_id = %conn.id_str, count = unlogged, "malformed frames dropped without a log line (rate limit)");
    }
    engine.cleanup_conn(&conn).await;
    // The writer ends on the queued Close; if the queue was full it may not see it while some
    // task still holds the connection, so do not wait on it forever.
    let abort = writer_task.abort_handle();
    // A slow consumer's queue is not worth flushing: free it now.
    if conn.is_slow_consumer() {
        abort.abort();
    }
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
                    let l = &conn.limits;
                    if st.buffer.len() >= l.max_buffered_registrations
                        || st.buffer_bytes + text.len() > l.max_buffered_registration_bytes
                    {
                        let (count, bytes) = (st.buffer.len(), st.buffer_bytes);
                        drop(st);
                        let msg = format!("registration refused: {count} registrations ({bytes} bytes) are already waiting for engine::workers::register; the limits are {} registrations and {} bytes", l.max_buffered_registrations, l.max_buffered_registration_bytes);
                        tracing::warn!(worker_id = %conn.id_str, "{msg}");
                        let _ = conn.try_send(registration_rejected(kind, &frame, &msg));
                        return;
                    }
                    st.buffer_bytes += text.len();
                    st.buffer.push(text.to_string());
                    return;
                }
            }
        };
        apply_checked(engine, conn, &ns, kind, frame, text).await;
        return;
    }
    match kind {
        Kind::InvokeFunction => {
            if frame.function_id.as_deref() == Some(iii_protocol::ids::functions::WORKERS_REGISTER)
                && !matches!(frame.action, Some(iii_protocol::Action::Enqueue { .. }))
                && conn.access().is_none_or(|a| {
                    a.may_call(
                        engine,
                        iii_protocol::ids::functions::WORKERS_REGISTER,
                        DEFAULT_NS,
                    )
                    .is_ok()
                })
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
    if should_log_malformed(conn) {
        let preview: String = text.chars().take(200).collect();
        tracing::warn!(worker_id = %conn.id_str, error = %e, frame = %preview, "malformed frame dropped");
    }
    // Loose on purpose: a `function_id` of the wrong type must not hide the invocation id.
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "type")]
        kind: Option<String>,
        invocation_id: Option<String>,
        function_id: Option<Value>,
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
                        p.function_id.as_ref().and_then(Value::as_str).unwrap_or(""),
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
        apply_checked(engine, conn, ns, kind, frame, text).await;
    }
}

/// Applies a registration frame in `ns`, first through the session's access policy when the
/// listener has one (PROTOCOL.md §9.4, §9.6, §9.7): it may rewrite, drop or refuse the frame.
async fn apply_checked(
    engine: &Core,
    conn: &Arc<Conn>,
    ns: &str,
    kind: Kind,
    frame: iii_protocol::Frame<'_>,
    text: &str,
) {
    let Some(access) = conn.access().cloned() else {
        return apply_decoded(engine, conn, ns, kind, frame, text.len()).await;
    };
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return;
    };
    match access.registration(engine, kind, ns, value).await {
        Registration::Apply(v) => {
            let rewritten = v.to_string();
            match decode(&rewritten) {
                Ok((k, f)) if k == kind => {
                    apply_decoded(engine, conn, ns, k, f, rewritten.len()).await
                }
                Ok(_) | Err(_) => {
                    tracing::warn!(worker_id = %conn.id_str, "registration dropped: the access policy rewrote it into something that is not the same kind of frame")
                }
            }
        }
        Registration::Drop(why) => {
            tracing::info!(worker_id = %conn.id_str, id = frame.id.as_deref().unwrap_or(""), kind = ?kind, "registration dropped by the listener's access policy: {why}")
        }
        Registration::Refuse(e) => {
            tracing::info!(worker_id = %conn.id_str, id = frame.id.as_deref().unwrap_or(""), kind = ?kind, "registration refused by the listener's access policy: {e}");
            if kind == Kind::RegisterTrigger {
                let _ = conn.try_send(iii_protocol::out::trigger_registration_result(
                    frame.id.as_deref().unwrap_or(""),
                    frame.trigger_type.as_deref().unwrap_or(""),
                    frame.function_id.as_deref().unwrap_or(""),
                    Some(&e),
                ));
            }
        }
    }
}

async fn apply_decoded(
    engine: &Core,
    conn: &Arc<Conn>,
    ns: &str,
    kind: Kind,
    frame: iii_protocol::Frame<'_>,
    len: usize,
) {
    if let Err(msg) = account_registration(conn, kind, &frame, len) {
        tracing::warn!(worker_id = %conn.id_str, "{msg}");
        let _ = conn.try_send(registration_rejected(kind, &frame, &msg));
        return;
    }
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
            if let Err(e) = check_trigger_config(engine, conn, ns, &frame) {
                tracing::info!(worker_id = %conn.id_str, id = frame.id.as_deref().unwrap_or(""), "trigger registration refused: {e}");
                let _ = conn.try_send(iii_protocol::out::trigger_registration_result(
                    frame.id.as_deref().unwrap_or(""),
                    frame.trigger_type.as_deref().unwrap_or(""),
                    frame.function_id.as_deref().unwrap_or(""),
                    Some(&e),
                ));
                return;
            }
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

/// The session's payload check of a `registertrigger` config (PROTOCOL.md §3.9) against the
/// trigger type it resolves to now; `Ok` when the listener does not validate, the type has no
/// schema or no provider yet.
fn check_trigger_config(
    engine: &Core,
    conn: &Conn,
    ns: &str,
    frame: &iii_protocol::Frame<'_>,
) -> Result<(), iii_protocol::ErrorBody> {
    let (Some(v), Some(ty)) = (conn.validator(), frame.trigger_type.as_deref()) else {
        return Ok(());
    };
    let schema = engine
        .triggers()
        .config_schema(ty, frame.trigger_namespace.as_deref(), ns);
    let Some(schema) = schema else {
        return Ok(());
    };
    let config = frame
        .config
        .and_then(|c| serde_json::from_str(c.get()).ok())
        .unwrap_or(Value::Null);
    v.check_trigger_config(ty, &schema, &config)
}

/// Sends the close status a protocol error calls for (RFC 6455, section 7.4.1): 1007 for a text frame
/// that is not UTF-8, 1009 for a message over the size limit.
fn protocol_error_close(conn: &Conn, e: &tokio_tungstenite::tungstenite::Error) {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Utf8 => {
            tracing::warn!(worker_id = %conn.id_str, "text frame is not valid UTF-8; closing with 1007");
            conn.close_with(1007, "invalid UTF-8 in a text frame".into());
        }
        WsError::Capacity(c) => {
            tracing::warn!(worker_id = %conn.id_str, error = %c, "message too large; closing with 1009");
            conn.close_with(1009, format!("message too large: {c}"));
        }
        other => tracing::debug!(worker_id = %conn.id_str, error = %other, "worker socket error"),
    }
}

/// Counts a malformed frame; true while the connection is within its log burst for the window.
/// When a window ends with frames left unlogged, one line says how many.
fn should_log_malformed(conn: &Conn) -> bool {
    let burst = conn.limits.malformed_log_burst;
    let mut st = conn.state.lock();
    let now = Instant::now();
    let (count, start) = &mut st.malformed;
    if start.is_none_or(|s| now.duration_since(s) >= MALFORMED_LOG_WINDOW) {
        if *count > burst {
            tracing::warn!(worker_id = %conn.id_str, count = *count - burst, window_s = MALFORMED_LOG_WINDOW.as_secs(), "malformed frames dropped without a log line (rate limit)");
        }
        *count = 0;
        *start = Some(now);
    }
    *count += 1;
    *count <= burst
}

fn take_unlogged_malformed(conn: &Conn) -> u32 {
    let burst = conn.limits.malformed_log_burst;
    let mut st = conn.state.lock();
    let unlogged = st.malformed.0.saturating_sub(burst);
    st.malformed = (0, None);
    unlogged
}

fn registration_key(kind: Kind) -> Option<u8> {
    match kind {
        Kind::RegisterFunction | Kind::UnregisterFunction => Some(0),
        Kind::RegisterTriggerType | Kind::UnregisterTriggerType => Some(1),
        Kind::RegisterTrigger | Kind::UnregisterTrigger => Some(2),
        _ => None,
    }
}

/// Books a registration against the connection's count and byte limits (an unregister frees
/// its slot). `Err` carries the refusal message.
fn account_registration(
    conn: &Conn,
    kind: Kind,
    frame: &iii_protocol::Frame<'_>,
    len: usize,
) -> Result<(), String> {
    let (Some(k), Some(id)) = (registration_key(kind), frame.id.as_deref()) else {
        return Ok(());
    };
    let key = (k, id.to_string());
    let mut st = conn.state.lock();
    let unregister = matches!(
        kind,
        Kind::UnregisterFunction | Kind::UnregisterTriggerType | Kind::UnregisterTrigger
    );
    let old = st.registrations.remove(&key).unwrap_or(0);
    st.registration_bytes -= old;
    if unregister {
        return Ok(());
    }
    let l = &conn.limits;
    if st.registrations.len() >= l.max_registrations
        || st.registration_bytes + len > l.max_registration_bytes
    {
        let msg = format!(
            "registration of `{id}` refused: this connection holds {} registrations ({} bytes); the limits are {} registrations and {} bytes",
            st.registrations.len(),
            st.registration_bytes,
            l.max_registrations,
            l.max_registration_bytes
        );
        return Err(msg);
    }
    st.registration_bytes += len;
    st.registrations.insert(key, len);
    Ok(())
}

/// The refusal of one registration frame: a `triggerregistrationresult` error for a trigger,
/// a `registrationrejected` otherwise.
fn registration_rejected(kind: Kind, frame: &iii_protocol::Frame<'_>, msg: &str) -> String {
    let id = frame.id.as_deref().unwrap_or("");
    if kind == Kind::RegisterTrigger {
        let err = iii_protocol::ErrorBody::new(REGISTRATION_LIMIT_EXCEEDED, msg);
        return iii_protocol::out::trigger_registration_result(
            id,
            frame.trigger_type.as_deref().unwrap_or(""),
            frame.function_id.as_deref().unwrap_or(""),
            Some(&err),
        );
    }
    serde_json::json!({
        "type": "registrationrejected",
        "code": REGISTRATION_LIMIT_EXCEEDED,
        "id": id,
        "message": msg,
    })
    .to_string()
}
