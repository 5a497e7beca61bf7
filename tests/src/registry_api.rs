//! The smallest server that speaks the iii registry API (workers-and-sandboxes spec §3.1) on a
//! free loopback port: `POST /resolve` answers the graph a test set for the requested worker
//! and version (`latest` = the last one set), anything else 404s; `GET <path>` serves files a
//! test put there (binary worker archives). It counts resolves, so a test can prove that
//! `iii worker sync` never asks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

#[derive(Default)]
struct State {
    /// worker → [(version, resolve answer)] in the order set.
    graphs: HashMap<String, Vec<(String, Value)>>,
    files: HashMap<String, Vec<u8>>,
}

/// A running registry API; stops when dropped.
pub struct RegistryApi {
    /// `http://127.0.0.1:<port>`: what `III_API_URL` is set to.
    pub url: String,
    state: Arc<Mutex<State>>,
    resolves: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RegistryApi {
    /// Listens on a free loopback port and serves until dropped.
    pub fn start() -> RegistryApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind registry API");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State::default()));
        let resolves = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, r, st) = (state.clone(), resolves.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    let _ = serve(c, &s, &r);
                }
            }
        });
        RegistryApi {
            url,
            state,
            resolves,
            stop,
        }
    }

    /// What `/resolve {worker, version}` answers (and `latest` from now on).
    pub fn set_graph(&self, worker: &str, version: &str, answer: Value) {
        self.state
            .lock()
            .unwrap()
            .graphs
            .entry(worker.into())
            .or_default()
            .push((version.into(), answer));
    }

    /// Serves `bytes` at `GET path`; returns the full URL.
    pub fn put_file(&self, path: &str, bytes: Vec<u8>) -> String {
        self.state.lock().unwrap().files.insert(path.into(), bytes);
        format!("{}{path}", self.url)
    }

    /// How many `/resolve` requests arrived.
    pub fn resolves(&self) -> usize {
        self.resolves.load(Ordering::SeqCst)
    }
}

impl Drop for RegistryApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn respond(mut c: &TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        c,
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )?;
    c.write_all(body)?;
    c.flush()
}

fn serve(c: TcpStream, state: &Mutex<State>, resolves: &AtomicUsize) -> std::io::Result<()> {
    let mut r = BufReader::new(&c);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let path = path.split('?').next().unwrap_or("").to_string();
    match (method.as_str(), path.as_str()) {
        ("POST", "/resolve") => {
            resolves.fetch_add(1, Ordering::SeqCst);
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let worker = req["worker"].as_str().unwrap_or("");
            let version = req["version"].as_str().unwrap_or("latest");
            let st = state.lock().unwrap();
            let answer = st.graphs.get(worker).and_then(|vs| {
                if version == "latest" {
                    vs.last()
                } else {
                    vs.iter().rev().find(|(v, _)| v == version)
                }
            });
            match answer {
                Some((_, a)) => respond(&c, "200 OK", "application/json", a.to_string().as_bytes()),
                None => respond(
                    &c,
                    "404 Not Found",
                    "application/json",
                    br#"{"error":"worker not found"}"#,
                ),
            }
        }
        ("GET", p) => {
            let file = state.lock().unwrap().files.get(p).cloned();
            match file {
                Some(b) => respond(&c, "200 OK", "application/octet-stream", &b),
                None => respond(&c, "404 Not Found", "text/plain", b"not found"),
            }
        }
        _ => respond(&c, "405 Method Not Allowed", "text/plain", b""),
    }
}
