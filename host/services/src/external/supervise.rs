//! Supervision of one out-of-process worker: spawn, restart with back-off when it dies, stop
//! and start on request ([`Control`]), its output to the engine's log and, for managed
//! workers, to per-worker log files ([`super::logs`]).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iii_core::CancellationToken;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::logs::LogFile;

/// How to start one supervised process, again after each exit.
pub(super) struct Launch {
    /// Who it is in the engine's log (`daemon = …`).
    pub(super) label: Arc<str>,
    pub(super) program: PathBuf,
    pub(super) args: Vec<OsString>,
    pub(super) env: Vec<(String, String)>,
    /// How long it may take to stop after SIGTERM before it is killed.
    pub(super) grace: Duration,
    /// Removed once the process is stopped for good.
    pub(super) config: PathBuf,
}

impl Launch {
    fn spawn(&self) -> std::io::Result<Child> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("III_ENGINE_PID", std::process::id().to_string())
            .env("III_LIFELINE", "stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only the child's
        // own process attributes; nothing else runs between fork and exec here.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        cmd.spawn()
    }
}

/// Restart back-off: the first wait, its ceiling, and the uptime after which it resets.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(60);
/// How often a live child is checked for having reached "running".
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Lines of each stream kept for `worker::status`.
const TAIL_LINES: usize = 20;

/// Where a supervised process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Spawned; what it runs is not up yet.
    Starting,
    /// Up ([`Control`]'s probe said so).
    Running,
    /// It exited after having run; waiting to restart it.
    Backoff,
    /// Stopped on request (or not started yet).
    Stopped,
    /// It cannot start at all (spawn failed, or it exited before ever running); retried
    /// with back-off, the reason in [`State::error`].
    Failed,
}

impl Phase {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Backoff => "backoff",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// What the supervisor last saw.
#[derive(Debug, Clone)]
pub(super) struct State {
    pub(super) phase: Phase,
    pub(super) pid: Option<u32>,
    /// Exits followed by a restart.
    pub(super) restarts: u64,
    pub(super) last_exit: Option<String>,
    /// When `phase` last changed, Unix ms.
    pub(super) since_ms: u64,
    pub(super) error: Option<String>,
    pub(super) stdout_tail: VecDeque<String>,
    pub(super) stderr_tail: VecDeque<String>,
}

/// What is asked of the supervisor: run or not, and a counter bumped to force a fresh start
/// (restart now, back-off reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Want {
    run: bool,
    epoch: u64,
}

/// Is the child with this pid up (its workload running)?
pub(super) type Probe = Box<dyn Fn(u32) -> bool + Send + Sync>;

/// The handle to one supervisor: its state and the stop/start/restart requests.
pub(super) struct Control {
    want: watch::Sender<Want>,
    state: parking_lot::Mutex<State>,
    probe: Option<Probe>,
    /// `(stdout, stderr)` log files, for managed workers.
    logs: Option<(parking_lot::Mutex<LogFile>, parking_lot::Mutex<LogFile>)>,
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Control {
    /// A supervisor that runs from the start. Without a probe a live child counts as running.
    pub(super) fn new(probe: Option<Probe>, logs: Option<(LogFile, LogFile)>) -> Arc<Control> {
        Arc::new(Control {
            want: watch::Sender::new(Want {
                run: true,
                epoch: 0,
            }),
            // Created to run: "starting" until its supervisor says otherwise.
            state: parking_lot::Mutex::new(State {
                phase: Phase::Starting,
                pid: None,
                restarts: 0,
                last_exit: None,
                since_ms: now_ms(),
                error: None,
                stdout_tail: VecDeque::new(),
                stderr_tail: VecDeque::new(),
            }),
            probe,
            logs: logs.map(|(o, e)| (parking_lot::Mutex::new(o), parking_lot::Mutex::new(e))),
        })
    }

    /// The current state (a starting child that is up now is reported running).
    pub(super) fn state(&self) -> State {
        if let Some(pid) = self.starting_pid() {
            self.check_up(pid);
        }
        self.state.lock().clone()
    }

    fn starting_pid(&self) -> Option<u32> {
        let st = self.state.lock();
        (st.phase == Phase::Starting).then_some(st.pid).flatten()
    }

    fn check_up(&self, pid: u32) {
        let up = self.probe.as_ref().is_none_or(|p| p(pid));
        let mut st = self.state.lock();
        if up && st.phase == Phase::Starting && st.pid == Some(pid) {
            st.phase = Phase::Running;
            st.since_ms = now_ms();
        }
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        let mut st = self.state.lock();
        let before = st.phase;
        f(&mut st);
        if st.phase != before {
            st.since_ms = now_ms();
        }
    }

    /// Stops it (no restart until [`Control::start`] or [`Control::restart`]); true when a
    /// process was running or about to be.
    pub(super) fn stop(&self) -> bool {
        let phase = self.state.lock().phase;
        self.want.send_modify(|w| w.run = false);
        !matches!(phase, Phase::Stopped)
    }

    /// Starts a stopped one, or retries a crashed one now; false when it already runs.
    pub(super) fn start(&self) -> bool {
        let phase = self.state.lock().phase;
        let run = self.want.borrow().run;
        match (run, phase) {
            (false, _) => {
                self.want.send_modify(|w| w.run = true);
                true
            }
            (true, Phase::Backoff | Phase::Failed) => {
                self.want.send_modify(|w| w.epoch += 1);
                true
            }
            _ => false,
        }
    }

    /// Stops and starts it again, with a fresh back-off.
    pub(super) fn restart(&self) {
        self.want.send_modify(|w| {
            w.run = true;
            w.epoch += 1;
        });
    }

    /// Waits (up to `limit`) until no process runs; true if none does.
    pub(super) async fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.state.lock().phase == Phase::Stopped {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn line(&self, stderr: bool, line: &str) {
        {
            let mut st = self.state.lock();
            let tail = if stderr {
                &mut st.stderr_tail
            } else {
                &mut st.stdout_tail
            };
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }
        if let Some((o, e)) = &self.logs {
            let f = if stderr { e } else { o };
            f.lock().append(line);
        }
    }

    /// The reason a host that never ran gave: its last ERROR line, else its last line.
    fn last_error(&self) -> Option<String> {
        let st = self.state.lock();
        st.stderr_tail
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with("ERROR"))
            .or_else(|| st.stderr_tail.back())
            .map(|l| l.trim().to_string())
    }
}

/// How a run ended.
enum Ended {
    /// The engine (or the service instance) is stopping.
    Shutdown,
    /// Stopped or restarted on request.
    Asked,
    /// It exited by itself (`long`: after a long enough run to reset the back-off), or could
    /// not be spawned; `status` says how.
    Exited { long: bool, status: String },
}

/// Runs `launch` until `stop`, as `ctl` asks: restarted with back-off (1 s, doubling to 30 s,
/// reset after a minute up or by a restart request) whenever it exits; on stop, SIGTERM then
/// SIGKILL after its grace.
pub(super) async fn supervise(launch: Launch, ctl: Arc<Control>, stop: CancellationToken) {
    let label = launch.label.clone();
    let mut rx = ctl.want.subscribe();
    let mut backoff = BACKOFF_FIRST;
    let mut epoch = rx.borrow().epoch;
    loop {
        let want = *rx.borrow_and_update();
        if want.epoch != epoch {
            epoch = want.epoch;
            backoff = BACKOFF_FIRST;
        }
        if !want.run {
            ctl.set(|s| {
                s.phase = Phase::Stopped;
                s.pid = None;
            });
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = rx.changed() => continue,
            }
        }
        let ended = match launch.spawn() {
            Ok(child) => run_once(&launch, &ctl, &mut rx, epoch, child, &stop).await,
            Err(e) => {
                let msg = format!("cannot start {}: {e}", launch.program.display());
                ctl.set(|s| {
                    s.phase = Phase::Failed;
                    s.pid = None;
                    s.error = Some(msg.clone());
                });
                Ended::Exited {
                    long: false,
                    status: msg,
                }
            }
        };
        match ended {
            Ended::Shutdown => break,
            Ended::Asked => continue,
            Ended::Exited { long, status } => {
                if long {
                    backoff = BACKOFF_FIRST;
                }
                tracing::warn!(daemon = %label, "{label} exited ({status}); restarting in {backoff:?}");
            }
        }
        let wait = backoff;
        backoff = (backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
            // A stop, start or restart request: the loop's top decides.
            _ = rx.changed() => {}
        }
    }
    ctl.set(|s| {
        s.phase = Phase::Stopped;
        s.pid = None;
    });
    let _ = std::fs::remove_file(&launch.config);
}

/// One life of the child: until it exits, a request changes what is wanted, or `stop`.
async fn run_once(
    launch: &Launch,
    ctl: &Arc<Control>,
    rx: &mut watch::Receiver<Want>,
    epoch: u64,
    mut child: Child,
    stop: &CancellationToken,
) -> Ended {
    let label = &launch.label;
    let pid = child.id();
    tracing::info!(daemon = %label, pid, "{label} started");
    ctl.set(|s| {
        s.phase = Phase::Starting;
        s.pid = pid;
        s.error = None;
    });
    if let Some(o) = child.stdout.take() {
        forward_lines(label.clone(), ctl.clone(), false, o);
    }
    if let Some(e) = child.stderr.take() {
        forward_lines(label.clone(), ctl.clone(), true, e);
    }
    // Held, never written: EOF on the child's stdin means the engine is gone.
    let lifeline = child.stdin.take();
    let started = Instant::now();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let ended = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                terminate(&mut child, launch.grace).await;
                break Ended::Shutdown;
            }
            r = rx.changed() => {
                let w = *rx.borrow();
                if r.is_ok() && (!w.run || w.epoch != epoch) {
                    tracing::info!(daemon = %label, "{label} {} on request", if w.run { "restarting" } else { "stopping" });
                    terminate(&mut child, launch.grace).await;
                    break Ended::Asked;
                }
            }
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                break exited(ctl, &status, started).await;
            }
            _ = tick.tick() => {
                if let Some(pid) = pid {
                    ctl.check_up(pid);
                }
            }
        }
    };
    drop(lifeline);
    ended
}

/// Records an exit by itself: back-off when it had run, failed when it never came up.
async fn exited(ctl: &Control, status: &str, started: Instant) -> Ended {
    let ran = ctl.state.lock().phase == Phase::Running;
    // Let the forwarders take its last lines (its reason) first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let error = if ran { None } else { ctl.last_error() };
    ctl.set(|s| {
        s.restarts += 1;
        s.last_exit = Some(status.to_string());
        s.pid = None;
        s.phase = if ran { Phase::Backoff } else { Phase::Failed };
        s.error = (!ran)
            .then(|| error.unwrap_or_else(|| format!("it exited ({status}) before it was up")));
    });
    Ended::Exited {
        long: started.elapsed() > BACKOFF_RESET_AFTER,
        status: status.to_string(),
    }
}

/// Sends each line of `r` to the engine's log under the process's name, and to `ctl`.
fn forward_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    name: Arc<str>,
    ctl: Arc<Control>,
    stderr: bool,
    r: R,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            ctl.line(stderr, &line);
            // Keep the process's own level when its line starts with one.
            let trimmed = line.trim_start();
            let (level, rest) = trimmed.split_once(' ').unwrap_or(("", trimmed));
            let rest = rest.trim_start();
            let name = &*name;
            match level {
                "ERROR" => tracing::error!(target: "iii::daemon", daemon = name, "{rest}"),
                "WARN" => tracing::warn!(target: "iii::daemon", daemon = name, "{rest}"),
                "INFO" => tracing::info!(target: "iii::daemon", daemon = name, "{rest}"),
                "DEBUG" => tracing::debug!(target: "iii::daemon", daemon = name, "{rest}"),
                "TRACE" => tracing::trace!(target: "iii::daemon", daemon = name, "{rest}"),
                _ => tracing::info!(target: "iii::daemon", daemon = name, "{line}"),
            }
        }
    });
}

/// Stops a child: SIGTERM (it stops its sandboxes), then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet (we hold it).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str, dir: &std::path::Path) -> Launch {
        Launch {
            label: Arc::from("t"),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: Vec::new(),
            grace: Duration::from_secs(2),
            config: dir.join("unused.yaml"),
        }
    }

    async fn until(ctl: &Control, what: &str, f: impl Fn(&State) -> bool) -> State {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = ctl.state();
            if f(&st) {
                return st;
            }
            assert!(Instant::now() < deadline, "{what}: {st:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| !s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
    }

    #[tokio::test]
    async fn stop_sticks_start_and_restart_respawn_and_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let ctl = Control::new(
            None,
            Some((
                LogFile::open(logs.clone(), "stdout.log"),
                LogFile::open(logs.clone(), "stderr.log"),
            )),
        );
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            sh("echo to-out; echo to-err >&2; exec sleep 30", dir.path()),
            ctl.clone(),
            stop.clone(),
        ));
        let st = until(&ctl, "running with output", |s| {
            s.phase == Phase::Running && !s.stderr_tail.is_empty() && !s.stdout_tail.is_empty()
        })
        .await;
        let first = st.pid.unwrap();
        assert_eq!(st.stdout_tail, ["to-out"]);
        assert_eq!(st.stderr_tail, ["to-err"]);
        assert_eq!(
            std::fs::read_to_string(logs.join("stderr.log")).unwrap(),
            "to-err\n"
        );

        assert!(ctl.stop());
        assert!(ctl.wait_stopped(Duration::from_secs(5)).await);
        assert!(!alive(first), "the stopped process lives");
        // Not restarted: still stopped well past the first back-off.
        tokio::time::sleep(BACKOFF_FIRST + Duration::from_millis(300)).await;
        let st = ctl.state();
        assert_eq!((st.phase, st.pid, st.restarts), (Phase::Stopped, None, 0));
        assert!(!ctl.stop(), "a second stop finds nothing running");

        assert!(ctl.start());
        let st = until(&ctl, "started again", |s| s.phase == Phase::Running).await;
        let second = st.pid.unwrap();
        assert_ne!(second, first);
        assert!(!ctl.start(), "start of a running one does nothing");

        ctl.restart();
        let st = until(&ctl, "restarted", |s| {
            s.phase == Phase::Running && s.pid.is_some_and(|p| p != second)
        })
        .await;
        assert!(!alive(second));
        assert_eq!(st.restarts, 0, "requested restarts are not crashes");
        stop.cancel();
        task.await.unwrap();
        assert!(!alive(st.pid.unwrap()));
    }

    #[tokio::test]
    async fn a_crash_backs_off_and_a_process_that_never_came_up_fails() {
        let dir = tempfile::tempdir().unwrap();
        // Up (no probe: alive counts), then it exits by itself.
        let ctl = Control::new(None, None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            sh("sleep 0.7; exit 3", dir.path()),
            ctl.clone(),
            stop.clone(),
        ));
        let st = until(&ctl, "backoff after the crash", |s| {
            s.phase == Phase::Backoff
        })
        .await;
        assert_eq!(st.restarts, 1);
        assert_eq!(st.last_exit.as_deref(), Some("exit status: 3"));
        until(&ctl, "restarted after the back-off", |s| {
            s.phase == Phase::Running
        })
        .await;
        stop.cancel();
        task.await.unwrap();

        // Never up (the probe says no): failed, with its last ERROR line as the reason.
        let ctl = Control::new(Some(Box::new(|_| false)), None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(supervise(
            sh(
                "echo 'ERROR cannot open the image' >&2; echo more >&2; exit 2",
                dir.path(),
            ),
            ctl.clone(),
            stop.clone(),
        ));
        let st = until(&ctl, "failed", |s| s.phase == Phase::Failed).await;
        assert_eq!(st.error.as_deref(), Some("ERROR cannot open the image"));
        // A start retries at once instead of waiting out the back-off.
        assert!(ctl.start());
        stop.cancel();
        task.await.unwrap();
    }
}
