//! A real RabbitMQ broker for the adapter tests: `rabbitmq-server` with its own node name,
//! data (mnesia) and log directories, epmd port, distribution port and AMQP port on 127.0.0.1,
//! so it never meets a system broker or another test's. Killed (with its epmd) on drop.

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::free_port;

/// A running broker; see the module docs.
pub struct Broker {
    child: Option<Child>,
    dir: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
}

/// The server script itself: Debian's `/usr/sbin/rabbitmq-server` wrapper switches to the
/// `rabbitmq` user, who cannot write the test's scratch directory.
fn server_bin() -> PathBuf {
    for p in [
        "/usr/lib/rabbitmq/bin/rabbitmq-server",
        "/usr/sbin/rabbitmq-server",
    ] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("rabbitmq-server is not installed: run tests/setup.sh");
}

impl Broker {
    /// Starts a broker and waits until it accepts AMQP connections.
    pub fn start() -> Broker {
        let dir = std::env::temp_dir().join(format!("iii-rabbitmq-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("mnesia")).expect("broker dir");
        std::fs::create_dir_all(dir.join("log")).expect("broker log dir");
        // No plugins (the management plugin would want a port of its own).
        std::fs::write(dir.join("enabled_plugins"), "[].\n").expect("enabled_plugins");
        let mut b = Broker {
            child: None,
            node: format!(
                "iii-test-{}@localhost",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            amqp_port: free_port(),
            dist_port: free_port(),
            epmd_port: free_port(),
            dir,
        };
        b.spawn();
        b
    }

    /// One broker for the whole test process, for tests that do not restart it (isolate them
    /// by queue and topic names). Statics are never dropped, so a watchdog process stops it
    /// when the test process exits.
    pub fn shared() -> &'static Broker {
        static SHARED: std::sync::OnceLock<Broker> = std::sync::OnceLock::new();
        SHARED.get_or_init(|| {
            let b = Broker::start();
            let pgid = b.child.as_ref().map(Child::id).unwrap_or(0);
            let script = format!(
                "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -KILL -- -{pgid} 2>/dev/null; ERL_EPMD_PORT={epmd} epmd -kill >/dev/null 2>&1; rm -rf '{dir}'",
                me = std::process::id(),
                epmd = b.epmd_port,
                dir = b.dir.display()
            );
            let _ = Command::new("sh")
                .args(["-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn();
            b
        })
    }

    fn spawn(&mut self) {
        let bin = server_bin();
        let log = std::fs::File::create(self.dir.join("server.out")).expect("server.out");
        let child = Command::new(bin)
            // Mnesia and the Erlang VM drop crash dumps in the working directory: keep them
            // in the scratch directory, not in the checkout.
            .current_dir(&self.dir)
            .env("ERL_CRASH_DUMP", self.dir.join("erl_crash.dump"))
            .env("HOME", &self.dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", self.dir.join("rabbit.pid"))
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                self.dir.join("advanced.config"),
            )
            .stdout(Stdio::from(log.try_clone().expect("clone")))
            .stderr(Stdio::from(log))
            // Its own process group, so stop() reaches the Erlang VM the script starts.
            .process_group(0)
            .spawn()
            .expect("spawn rabbitmq-server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "rabbitmq-server exited early with {status}:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "rabbitmq-server did not listen within 120 s:\n{}",
            self.output()
        );
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/` (guest may log in from loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// `127.0.0.1:<port>`, the AMQP listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.amqp_port)
    }

    /// SIGKILLs the broker (no clean shutdown) and waits until the port is closed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The whole group: the script and the Erlang VM it starts.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .status();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the broker again on the same node, data and ports.
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Kills the broker and starts it again (durable queues and persistent messages stay).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Stops the broker and its epmd.
    pub fn stop(&mut self) {
        self.kill();
        let _ = Command::new("epmd")
            .arg("-kill")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
