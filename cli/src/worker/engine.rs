//! What `iii worker` asks a running engine: is its port open, which workers are connected, and
//! the readiness wait after an add (workers-and-sandboxes spec section 7.1).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::trigger::Client;

/// The liveness probe's connect timeout.
const PROBE: Duration = Duration::from_millis(200);
/// `engine::workers::list`'s trigger timeout; the whole exchange is bounded by [`OUTER`].
const LIST_TIMEOUT: Duration = Duration::from_secs(3);
const OUTER: Duration = Duration::from_secs(5);
/// How long `add` waits for a worker to connect unless `--no-wait`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Is something listening on the engine's worker port?
pub async fn reachable(port: u16) -> bool {
    matches!(
        tokio::time::timeout(PROBE, tokio::net::TcpStream::connect(("127.0.0.1", port))).await,
        Ok(Ok(_))
    )
}

/// A worker the engine reports, reduced to what `list` and the wait use.
#[derive(Debug, Clone)]
pub struct LiveWorker {
    pub name: String,
    pub id: String,
    pub version: Option<String>,
    pub status: String,
}

impl LiveWorker {
    /// Connected or registered under `name` (by name or id).
    pub fn is(&self, name: &str) -> bool {
        self.status != "disconnected" && (self.name == name || self.id == name)
    }
}

/// One `engine::workers::list` over `client`.
async fn list_on(client: &mut Client) -> Option<Vec<LiveWorker>> {
    let answer = client
        .call("engine::workers::list", &json!({}), None, LIST_TIMEOUT)
        .await
        .ok()??;
    let rows = answer.get("workers")?.as_array()?;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    Some(
        rows.iter()
            .map(|w| LiveWorker {
                name: s(w, "name").unwrap_or_default(),
                id: s(w, "id").unwrap_or_default(),
                version: s(w, "version").filter(|v| !v.is_empty()),
                status: s(w, "status").unwrap_or_default(),
            })
            .collect(),
    )
}

/// The engine's workers, or `None` when it is not reachable or does not answer.
pub async fn workers(port: u16) -> Option<Vec<LiveWorker>> {
    if !reachable(port).await {
        return None;
    }
    let work = async {
        let mut c = Client::connect(&format!("ws://127.0.0.1:{port}"))
            .await
            .ok()?;
        let r = list_on(&mut c).await;
        c.close().await;
        r
    };
    tokio::time::timeout(OUTER, work).await.ok().flatten()
}

/// How a readiness wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The worker connected.
    Ready,
    /// The budget passed first (the engine keeps starting it).
    NotYet,
    /// No engine listens: nothing to observe.
    EngineDown,
}

/// After an add: waits until a worker named `name` is connected (polling about once a second
/// over one connection), up to `budget`. A timeout prints a hint; the caller decides whether
/// it is a failure (only for local-path adds, as upstream).
pub async fn wait_ready(name: &str, port: u16, budget: Duration) -> Readiness {
    if !reachable(port).await {
        eprintln!("⚠ engine not running; start it to observe boot.");
        return Readiness::EngineDown;
    }
    eprintln!(
        "waiting up to {}s for {name} to connect to the engine on port {port}...",
        budget.as_secs()
    );
    let started = Instant::now();
    let mut client: Option<Client> = None;
    while started.elapsed() < budget {
        if client.is_none() {
            client = Client::connect(&format!("ws://127.0.0.1:{port}"))
                .await
                .ok();
        }
        if let Some(c) = client.as_mut() {
            match list_on(c).await {
                Some(ws) if ws.iter().any(|w| w.is(name)) => {
                    eprintln!("✓ ready in {:.1}s", started.elapsed().as_secs_f64());
                    if let Some(c) = client.take() {
                        c.close().await;
                    }
                    return Readiness::Ready;
                }
                Some(_) => {}
                // The connection broke (engine restarting): reconnect on the next tick.
                None => client = None,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(c) = client.take() {
        c.close().await;
    }
    eprintln!(
        "⚠ {name} is not ready after {}s; the engine keeps starting it in the background. \
Run `iii worker status {name}` to follow it and `iii worker logs -f {name}` for its output.",
        budget.as_secs()
    );
    Readiness::NotYet
}
