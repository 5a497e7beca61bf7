//! A worker connection for tests: a real [`Conn`] registered with the core, whose outbound
//! queue the test holds, plus the entry points the session read loop would call for its frames.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::conn::{Conn, Out};
use crate::core::{new_id, Core};
use crate::triggers::{Binding, BuiltinTriggerType};

/// How long a test waits for a frame it expects. Generous: a frame that is due arrives at once.
const EXPECT_WITHIN: Duration = Duration::from_secs(1);

/// A connected worker whose outbound frames the test reads.
pub(super) struct TestConn {
    pub conn: Arc<Conn>,
    rx: mpsc::UnboundedReceiver<Out>,
    ns: String,
}

impl TestConn {
    /// Connects a worker whose namespace is already fixed to `ns`.
    pub fn connect(core: &Core, ns: &str) -> TestConn {
        let (tx, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Conn::new(new_id(), new_id(), "127.0.0.1".into(), tx));
        conn.state.lock().namespace = Some(ns.to_string());
        core.add_conn(conn.clone());
        TestConn {
            conn,
            rx,
            ns: ns.to_string(),
        }
    }

    /// The connection's worker id as it appears on the wire.
    pub fn worker_id(&self) -> &str {
        &self.conn.id_str
    }

    /// Applies a registration frame (`registerfunction`, `registertriggertype`,
    /// `registertrigger`, `unregistertrigger`, …) in the connection's namespace.
    pub async fn register(&self, core: &Core, frame: Value) {
        crate::session::apply_registration(core, &self.conn, &self.ns, &frame.to_string()).await;
    }

    /// Sends an `invokefunction` frame to the engine.
    pub async fn invoke(&self, core: &Core, frame: Value) {
        self.invoke_text(core, &frame.to_string()).await;
    }

    /// Sends an `invokefunction` frame, given as its exact text, to the engine.
    pub async fn invoke_text(&self, core: &Core, text: &str) {
        let (_, f) = iii_protocol::decode(text).expect("test frame decodes");
        core.invoke_from_worker(&self.conn, f).await;
    }

    /// Sends an `invocationresult` frame to the engine.
    pub async fn answer(&self, core: &Core, frame: Value) {
        let text = frame.to_string();
        let (_, f) = iii_protocol::decode(&text).expect("test frame decodes");
        core.on_result(&self.conn, f).await;
    }

    /// Sends a `triggerregistrationresult` frame to the engine.
    pub async fn trigger_result(&self, core: &Core, frame: Value) {
        let text = frame.to_string();
        let (_, f) = iii_protocol::decode(&text).expect("test frame decodes");
        let sends = core.triggers().on_registration_result(core, &self.conn, &f);
        crate::triggers::deliver(sends).await;
    }

    /// The worker disconnects: the session's cleanup runs to completion.
    pub async fn leave(&self, core: &Core) {
        self.conn.close();
        core.cleanup_conn(&self.conn).await;
    }

    /// The next frame already queued for this worker, if any.
    pub fn try_next(&mut self) -> Option<Value> {
        loop {
            match self.rx.try_recv() {
                Ok(Out::Text(t)) => {
                    return Some(serde_json::from_str(&t).expect("engine frames are JSON"))
                }
                // The close marker is not a frame.
                Ok(Out::Close | Out::CloseWith(..)) => continue,
                Err(_) => return None,
            }
        }
    }

    /// The next frame for this worker; panics if none comes.
    pub async fn next(&mut self) -> Value {
        loop {
            match tokio::time::timeout(EXPECT_WITHIN, self.rx.recv()).await {
                Ok(Some(Out::Text(t))) => {
                    return serde_json::from_str(&t).expect("engine frames are JSON")
                }
                Ok(Some(Out::Close | Out::CloseWith(..))) => continue,
                Ok(None) => panic!("outbound queue of {} closed", self.conn.id_str),
                Err(_) => panic!("no frame for {} within {EXPECT_WITHIN:?}", self.conn.id_str),
            }
        }
    }

    /// The next frame, which must be of `kind`.
    pub async fn expect(&mut self, kind: &str) -> Value {
        let f = self.next().await;
        assert_eq!(f["type"], kind, "unexpected frame: {f}");
        f
    }

    /// Asserts that nothing is queued for this worker.
    pub fn assert_silent(&mut self) {
        if let Some(f) = self.try_next() {
            panic!("{} got an unexpected frame: {f}", self.conn.id_str);
        }
    }
}

/// What a service-provided trigger type was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Armed {
    Register(String),
    Unregister(String),
}

/// A service-provided trigger type that records every register and unregister.
#[derive(Default)]
pub(super) struct RecordingType {
    pub log: Mutex<Vec<Armed>>,
}

impl RecordingType {
    pub fn events(&self) -> Vec<Armed> {
        self.log.lock().clone()
    }
}

impl BuiltinTriggerType for RecordingType {
    fn register(&self, binding: &Binding) -> Result<(), String> {
        self.log.lock().push(Armed::Register(binding.id.clone()));
        Ok(())
    }

    fn unregister(&self, binding: &Binding) {
        self.log.lock().push(Armed::Unregister(binding.id.clone()));
    }
}

/// A fresh invocation id in wire form.
pub(super) fn invocation_id() -> String {
    iii_protocol::format_uuid(new_id())
}
