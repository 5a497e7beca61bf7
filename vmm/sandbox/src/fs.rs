//! `sandbox::fs::*`: file operations inside a sandbox, carried out by its guest agent (never on
//! the host's view of the sandbox's files, so symlinks inside cannot point the daemon at host
//! paths). Large contents travel through engine data channels in both directions.

use std::sync::Arc;

use iii_sandbox_runtime::SandboxHandle;
use iii_sdk::channels::{ChannelReader, StreamChannelRef};
use iii_sdk::IIIClient;
use iii_vm_agent_proto::{FileInfo, FsRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent;
use crate::daemon::Daemon;
use crate::error::{invalid, SandboxError};
use crate::request::{decode_b64, parse_mode, sandbox_id};

/// Files smaller than this come back inline as `body` too (when they are UTF-8).
pub const INLINE_LIMIT: u64 = 1 << 20;
/// Chunk size on data channels and towards the guest.
pub const CHUNK: usize = 64 * 1024;

fn yes() -> bool {
    true
}
fn dir_mode() -> String {
    "0755".into()
}
fn file_mode() -> String {
    "0644".into()
}
fn max_matches() -> usize {
    10_000
}
fn max_line_bytes() -> usize {
    4096
}

/// A request naming one path.
#[derive(Debug, Deserialize)]
pub struct PathRequest {
    /// Target sandbox.
    pub sandbox_id: String,
    /// Absolute path inside it.
    pub path: String,
}

/// `fs::mkdir`.
#[derive(Debug, Deserialize)]
pub struct MkdirRequest {
    sandbox_id: String,
    path: String,
    #[serde(default = "dir_mode")]
    mode: String,
    #[serde(default)]
    parents: bool,
}

/// `fs::write`.
#[derive(Debug, Deserialize)]
pub struct WriteRequest {
    sandbox_id: String,
    path: String,
    #[serde(default = "file_mode")]
    mode: String,
    #[serde(default)]
    parents: bool,
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    content_b64: Option<String>,
}

/// `fs::rm`.
#[derive(Debug, Deserialize)]
pub struct RmRequest {
    sandbox_id: String,
    path: String,
    #[serde(default)]
    recursive: bool,
}

/// `fs::chmod`.
#[derive(Debug, Deserialize)]
pub struct ChmodRequest {
    sandbox_id: String,
    path: String,
    mode: String,
    #[serde(default)]
    uid: Option<u32>,
    #[serde(default)]
    gid: Option<u32>,
    #[serde(default)]
    recursive: bool,
}

/// `fs::mv`.
#[derive(Debug, Deserialize)]
pub struct MvRequest {
    sandbox_id: String,
    src: String,
    dst: String,
    #[serde(default)]
    overwrite: bool,
}

/// `fs::grep`.
#[derive(Debug, Deserialize)]
pub struct GrepRequest {
    sandbox_id: String,
    path: String,
    pattern: String,
    #[serde(default = "yes")]
    recursive: bool,
    #[serde(default)]
    ignore_case: bool,
    #[serde(default)]
    include_glob: Vec<String>,
    #[serde(default)]
    exclude_glob: Vec<String>,
    #[serde(default = "max_matches")]
    max_matches: usize,
    #[serde(default = "max_line_bytes")]
    max_line_bytes: usize,
}

/// `fs::sed`.
#[derive(Debug, Deserialize)]
pub struct SedRequest {
    sandbox_id: String,
    #[serde(default)]
    files: Option<Vec<String>>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default = "yes")]
    recursive: bool,
    #[serde(default)]
    include_glob: Vec<String>,
    #[serde(default)]
    exclude_glob: Vec<String>,
    pattern: String,
    replacement: String,
    #[serde(default = "yes")]
    regex: bool,
    #[serde(default)]
    first_only: bool,
    #[serde(default)]
    ignore_case: bool,
}

/// The wire shape of one entry: permission bits as an octal string.
fn entry(info: &FileInfo) -> Value {
    json!({
        "name": info.name,
        "is_dir": info.is_dir,
        "size": info.size,
        "mode": format!("{:04o}", info.mode & 0o7777),
        "mtime": info.mtime,
        "is_symlink": info.is_symlink,
    })
}

fn need_path(p: &str, field: &str) -> Result<(), SandboxError> {
    if p.is_empty() {
        return Err(SandboxError::fs("S210", format!("`{field}` is empty")));
    }
    Ok(())
}

impl Daemon {
    fn fs_target(&self, id: &str) -> Result<Arc<dyn SandboxHandle>, SandboxError> {
        self.registry.touch(sandbox_id(id)?)
    }

    /// `fs::ls`.
    pub async fn fs_ls(&self, r: PathRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let resp = agent::fs(h, FsRequest::List { path: r.path }, Vec::new()).await?;
        Ok(json!({"entries": resp.entries.iter().map(entry).collect::<Vec<_>>()}))
    }

    /// `fs::stat`.
    pub async fn fs_stat(&self, r: PathRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let resp = agent::fs(
            h,
            FsRequest::Stat {
                path: r.path.clone(),
            },
            Vec::new(),
        )
        .await?;
        let mut info = resp
            .entries
            .first()
            .cloned()
            .ok_or_else(|| SandboxError::fs("S211", format!("file not found: {}", r.path)))?;
        // The entry's own name, as `ls` gives it (the agent echoes the path asked about).
        info.name = std::path::Path::new(&r.path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into());
        Ok(entry(&info))
    }

    /// `fs::mkdir`.
    pub async fn fs_mkdir(&self, r: MkdirRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let mode = parse_mode(&r.mode, "mode")?;
        let req = FsRequest::Mkdir {
            path: r.path,
            mode,
            parents: r.parents,
        };
        let resp = agent::fs(h, req, Vec::new()).await?;
        Ok(agent::value(&resp))
    }

    /// `fs::rm`.
    pub async fn fs_rm(&self, r: RmRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let req = FsRequest::Remove {
            path: r.path,
            recursive: r.recursive,
        };
        Ok(agent::value(&agent::fs(h, req, Vec::new()).await?))
    }

    /// `fs::chmod`.
    pub async fn fs_chmod(&self, r: ChmodRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let req = FsRequest::Chmod {
            path: r.path,
            mode: parse_mode(&r.mode, "mode")?,
            uid: r.uid,
            gid: r.gid,
            recursive: r.recursive,
        };
        Ok(agent::value(&agent::fs(h, req, Vec::new()).await?))
    }

    /// `fs::mv`.
    pub async fn fs_mv(&self, r: MvRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.src, "src")?;
        need_path(&r.dst, "dst")?;
        let req = FsRequest::Rename {
            src: r.src,
            dst: r.dst,
            overwrite: r.overwrite,
        };
        Ok(agent::value(&agent::fs(h, req, Vec::new()).await?))
    }

    /// `fs::grep`.
    pub async fn fs_grep(&self, r: GrepRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let req = FsRequest::Grep {
            path: r.path,
            pattern: r.pattern,
            recursive: r.recursive,
            ignore_case: r.ignore_case,
            include_glob: r.include_glob,
            exclude_glob: r.exclude_glob,
            max_matches: r.max_matches,
            max_line_bytes: r.max_line_bytes,
        };
        Ok(agent::value(&agent::fs(h, req, Vec::new()).await?))
    }

    /// `fs::sed`.
    pub async fn fs_sed(&self, r: SedRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        let files =
            match (r.files.clone(), r.path.clone()) {
                (Some(f), None) if !f.is_empty() => f,
                (None, Some(p)) if !p.is_empty() => {
                    let req = sed_request(Vec::new(), Some(p), &r.pattern, &r.replacement, &r);
                    return Ok(agent::value(&agent::fs(h, req, Vec::new()).await?));
                }
                _ => return Err(SandboxError::fs(
                    "S210",
                    "give exactly one of `files` (a list of paths) or `path` (a file or directory)",
                )),
            };
        let req = sed_request(files, None, &r.pattern, &r.replacement, &r);
        Ok(agent::value(&agent::fs(h, req, Vec::new()).await?))
    }

    /// `fs::write`: `content` as text or a data channel, or `content_b64`.
    pub async fn fs_write(&self, r: WriteRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let mode = parse_mode(&r.mode, "mode")?;
        let req = |stream: bool| FsRequest::Write {
            path: r.path.clone(),
            mode,
            parents: r.parents,
            stream,
        };
        let resp = match (&r.content, &r.content_b64) {
            (Some(Value::String(s)), None) => agent::fs(h, req(false), s.clone().into_bytes()).await?,
            (None, Some(b)) => agent::fs(h, req(false), decode_b64(b, "content_b64")?).await?,
            (Some(v @ Value::Object(_)), None) => {
                let cref: StreamChannelRef = serde_json::from_value(v.clone()).map_err(|e| {
                    invalid(format!(
                        "`content` must be a string or a stream channel ref {{channel_id, access_key, direction}}: {e}"
                    ))
                })?;
                let reader = ChannelReader::new(&self.engine_url, &cref);
                let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(16);
                let writer = agent::write_stream(h, req(true), rx);
                let pump = async move {
                    let idle = std::time::Duration::from_secs(30);
                    loop {
                        match tokio::time::timeout(idle, reader.next_binary()).await {
                            Ok(Ok(Some(chunk))) => {
                                // The guest side takes ≤64 KiB per frame.
                                for part in chunk.chunks(CHUNK) {
                                    let tx = tx.clone();
                                    let part = part.to_vec();
                                    if tokio::task::spawn_blocking(move || tx.send(part))
                                        .await
                                        .map(|r| r.is_err())
                                        .unwrap_or(true)
                                    {
                                        return Err(SandboxError::fs(
                                            "S218",
                                            "fs channel aborted: the guest stopped reading",
                                        ));
                                    }
                                }
                            }
                            Ok(Ok(None)) => return Ok(()),
                            Ok(Err(e)) => {
                                return Err(SandboxError::fs(
                                    "S218",
                                    format!("fs channel aborted: {e}"),
                                ))
                            }
                            Err(_) => {
                                return Err(SandboxError::fs(
                                    "S218",
                                    "fs channel aborted: no data for 30 s",
                                ))
                            }
                        }
                    }
                };
                let (pumped, written) = tokio::join!(pump, writer);
                // An aborted upload must not leave a partial file: the guest only renames
                // into place after the last (empty) chunk, which the pump never sent then.
                pumped?;
                written?
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "give exactly one of `content` or `content_b64`, not both",
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "missing file contents: set `content` (text or a stream channel ref) or `content_b64`",
                ))
            }
            (Some(other), None) => {
                return Err(invalid(format!(
                    "`content` must be a string or a stream channel ref, got {other}"
                )))
            }
        };
        let mut v = agent::value(&resp);
        if let Value::Object(m) = &mut v {
            m.insert("path".into(), Value::String(r.path));
        }
        Ok(v)
    }

    /// `fs::read`: metadata, a data channel with the bytes, and the text inline when small.
    pub async fn fs_read(&self, iii: &IIIClient, r: PathRequest) -> Result<Value, SandboxError> {
        let h = self.fs_target(&r.sandbox_id)?;
        need_path(&r.path, "path")?;
        let (meta_tx, meta_rx) = tokio::sync::oneshot::channel();
        let (chunk_tx, mut chunk_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        let reading = tokio::spawn(agent::read_stream(h, r.path.clone(), meta_tx, chunk_tx));
        let info = match meta_rx.await {
            Ok(info) => info,
            // No metadata: the read failed before it started; its error says why.
            Err(_) => {
                return Err(match reading.await {
                    Ok(Err(e)) => e,
                    _ => SandboxError::fs("S216", "fs i/o error: read ended without metadata"),
                })
            }
        };
        let mut head = Vec::new();
        let mut done = false;
        if info.size < INLINE_LIMIT {
            while head.len() as u64 <= INLINE_LIMIT {
                match chunk_rx.recv().await {
                    Some(c) => head.extend_from_slice(&c),
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            if done {
                if let Ok(Err(e)) = reading.await {
                    return Err(e);
                }
            }
        }
        let body = if done {
            String::from_utf8(head.clone()).ok()
        } else {
            None
        };
        let channel = iii_sdk::helpers::create_channel(iii, Some(64))
            .await
            .map_err(|e| SandboxError::fs("S218", format!("fs channel aborted: {e}")))?;
        let writer = channel.writer;
        tokio::spawn(async move {
            let result: Result<(), String> = async {
                for part in head.chunks(CHUNK) {
                    writer.write(part).await.map_err(|e| e.to_string())?;
                }
                while let Some(c) = chunk_rx.recv().await {
                    writer.write(&c).await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                let _ = writer
                    .send_message(
                        &json!({"error": format!("write to channel failed: {e}")}).to_string(),
                    )
                    .await;
            }
            let _ = writer.close().await;
        });
        let mut out = json!({
            "content": channel.reader_ref,
            "size": info.size,
            "mode": format!("{:04o}", info.mode & 0o7777),
            "mtime": info.mtime,
        });
        if let Some(b) = body {
            out["body"] = Value::String(b);
        }
        Ok(out)
    }
}

fn sed_request(
    files: Vec<String>,
    path: Option<String>,
    pattern: &str,
    replacement: &str,
    r: &SedRequest,
) -> FsRequest {
    FsRequest::Sed {
        files,
        path,
        recursive: r.recursive,
        include_glob: r.include_glob.clone(),
        exclude_glob: r.exclude_glob.clone(),
        pattern: pattern.to_string(),
        replacement: replacement.to_string(),
        regex: r.regex,
        first_only: r.first_only,
        ignore_case: r.ignore_case,
    }
}
