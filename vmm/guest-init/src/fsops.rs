//! The agent's file operations: every [`FsRequest`], with S-coded errors and
//! the op's result object. Writes are atomic (temp file in the same
//! directory, fsync, rename), so a reader never sees half a file.

use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use iii_vm_agent_proto::{
    codes, FileInfo, Frame, FsRequest, FsResponse, Kind, FS_CHUNK, MAX_FRAME,
};
use serde_json::{json, Value};

/// Every `op` tag this agent serves; anything else is S219.
pub const KNOWN_OPS: &[&str] = &[
    "read",
    "write",
    "mkdir",
    "remove",
    "list",
    "stat",
    "read_stream",
    "chmod",
    "rename",
    "grep",
    "sed",
];

/// A failed operation: S-code and message (the `sandbox::fs::*` wording).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct FsError {
    pub code: &'static str,
    pub message: String,
}

impl FsError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Maps an I/O error on `path` to its S-code.
    pub fn io(path: &Path, e: &io::Error) -> Self {
        let p = path.display();
        match e.raw_os_error() {
            Some(libc::ENOENT) => Self::new(codes::NOT_FOUND, format!("file not found: {p}")),
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
                Self::new(codes::PERMISSION, format!("permission denied: {p}: {e}"))
            }
            Some(libc::EEXIST) => Self::new(codes::EXISTS, format!("already exists: {p}")),
            Some(libc::ENOTDIR | libc::EISDIR) => Self::new(
                codes::WRONG_TYPE,
                format!("not a directory or wrong type: {p}"),
            ),
            Some(libc::ENOTEMPTY) => {
                Self::new(codes::NOT_EMPTY, format!("directory not empty: {p}"))
            }
            _ => Self::new(codes::IO, format!("fs i/o error: {p}: {e}")),
        }
    }

    fn parent_missing(parent: &Path) -> Self {
        Self::new(
            codes::NOT_FOUND,
            format!("parent directory not found: {}", parent.display()),
        )
    }

    fn wrong_type(path: &Path) -> Self {
        Self::new(
            codes::WRONG_TYPE,
            format!("not a directory or wrong type: {}", path.display()),
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID, message)
    }

    pub fn into_response(self) -> FsResponse {
        FsResponse::failed(self.code, self.message)
    }
}

type FsResult<T> = Result<T, FsError>;

fn ctx<T>(path: &Path, r: io::Result<T>) -> FsResult<T> {
    r.map_err(|e| FsError::io(path, &e))
}

/// The answer to `Fs` frame whose header did not decode as a [`FsRequest`].
pub fn undecodable(header: &Value, err: &serde_json::Error) -> FsResponse {
    match header.get("op").and_then(Value::as_str) {
        Some(op) if !KNOWN_OPS.contains(&op) => FsResponse::failed(
            codes::UNSUPPORTED,
            format!("unsupported fs operation: {op}"),
        ),
        _ => FsResponse::failed(codes::INVALID, format!("invalid request: {err}")),
    }
}

/// Runs one non-streaming operation; returns the response and any data read.
pub fn run(req: &FsRequest, data: &[u8]) -> (FsResponse, Vec<u8>) {
    let r: FsResult<(Vec<FileInfo>, Option<Value>, Vec<u8>)> = match req {
        FsRequest::Read { path } => read(Path::new(path)).map(|d| (vec![], None, d)),
        FsRequest::Write {
            path,
            mode,
            parents,
            stream: false,
        } => write_all(Path::new(path), *mode, *parents, data)
            .map(|n| (vec![], Some(json!({ "bytes_written": n })), vec![])),
        FsRequest::Write { stream: true, .. } | FsRequest::ReadStream { .. } => Err(
            FsError::invalid("invalid request: a streaming op on a non-streaming path"),
        ),
        FsRequest::Mkdir {
            path,
            mode,
            parents,
        } => mkdir(Path::new(path), *mode, *parents)
            .map(|c| (vec![], Some(json!({ "created": c })), vec![])),
        FsRequest::Remove { path, recursive } => remove(Path::new(path), *recursive)
            .map(|()| (vec![], Some(json!({ "removed": true })), vec![])),
        FsRequest::List { path } => list(Path::new(path)).map(|e| (e, None, vec![])),
        FsRequest::Stat { path } => {
            let p = Path::new(path);
            ctx(p, fs::symlink_metadata(p)).map(|md| (vec![info(path.clone(), &md)], None, vec![]))
        }
        FsRequest::Chmod {
            path,
            mode,
            uid,
            gid,
            recursive,
        } => chmod(Path::new(path), *mode, *uid, *gid, *recursive)
            .map(|n| (vec![], Some(json!({ "updated": n })), vec![])),
        FsRequest::Rename {
            src,
            dst,
            overwrite,
        } => rename(Path::new(src), Path::new(dst), *overwrite)
            .map(|()| (vec![], Some(json!({ "moved": true })), vec![])),
        FsRequest::Grep {
            path,
            pattern,
            recursive,
            ignore_case,
            include_glob,
            exclude_glob,
            max_matches,
            max_line_bytes,
        } => grep(&GrepArgs {
            root: Path::new(path),
            pattern,
            recursive: *recursive,
            ignore_case: *ignore_case,
            include: include_glob,
            exclude: exclude_glob,
            max_matches: *max_matches,
            max_line_bytes: *max_line_bytes,
        })
        .map(|v| (vec![], Some(v), vec![])),
        FsRequest::Sed {
            files,
            path,
            recursive,
            include_glob,
            exclude_glob,
            pattern,
            replacement,
            regex,
            first_only,
            ignore_case,
        } => sed(&SedArgs {
            files,
            path: path.as_deref().map(Path::new),
            recursive: *recursive,
            include: include_glob,
            exclude: exclude_glob,
            pattern,
            replacement,
            regex: *regex,
            first_only: *first_only,
            ignore_case: *ignore_case,
        })
        .map(|v| (vec![], Some(v), vec![])),
    };
    match r {
        Ok((entries, value, out)) => (
            FsResponse {
                entries,
                value,
                ..Default::default()
            },
            out,
        ),
        Err(e) => (e.into_response(), Vec::new()),
    }
}

pub fn info(name: String, md: &Metadata) -> FileInfo {
    FileInfo {
        name,
        size: md.size(),
        mode: md.mode(),
        is_dir: md.is_dir(),
        mtime: md.mtime(),
        is_symlink: md.file_type().is_symlink(),
    }
}

/// What one `FsResult` frame may carry, leaving room for its JSON header.
pub const MAX_RESULT: usize = MAX_FRAME - (64 << 10);

fn read(path: &Path) -> FsResult<Vec<u8>> {
    let md = ctx(path, fs::metadata(path))?;
    if md.is_dir() {
        return Err(FsError::wrong_type(path));
    }
    if md.len() > MAX_RESULT as u64 {
        return Err(FsError::invalid(format!(
            "invalid request: {} is {} bytes, more than one frame holds; use read_stream",
            path.display(),
            md.len()
        )));
    }
    ctx(path, fs::read(path))
}

fn list(path: &Path) -> FsResult<Vec<FileInfo>> {
    let md = ctx(path, fs::metadata(path))?;
    if !md.is_dir() {
        return Err(FsError::wrong_type(path));
    }
    let mut v = Vec::new();
    for e in ctx(path, fs::read_dir(path))? {
        let e = ctx(path, e)?;
        // The entry may vanish between readdir and lstat; skip it then.
        let Ok(md) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        v.push(info(e.file_name().to_string_lossy().into(), &md));
    }
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

fn parent_of(path: &Path) -> FsResult<&Path> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Ok(p),
        _ => Err(FsError::invalid(format!(
            "invalid request: no parent directory for {}",
            path.display()
        ))),
    }
}

/// Makes sure `path`'s parent exists (creating it with `parents`).
fn ensure_parent(path: &Path, parents: bool) -> FsResult<()> {
    let parent = parent_of(path)?;
    match fs::metadata(parent) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(FsError::wrong_type(parent)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && parents => {
            ctx(parent, fs::create_dir_all(parent))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(FsError::parent_missing(parent)),
        Err(e) => Err(FsError::io(parent, &e)),
    }
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A file being written next to its destination, renamed over it on commit
/// and removed if dropped uncommitted.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
    written: u64,
}

impl AtomicFile {
    pub fn create(dest: &Path, mode: u32, parents: bool) -> FsResult<Self> {
        // Writing through a symlink writes its target (as `>` does), not a
        // regular file over the link.
        let resolved;
        let dest = match fs::symlink_metadata(dest) {
            Ok(md) if md.file_type().is_symlink() => match fs::canonicalize(dest) {
                Ok(t) => {
                    resolved = t;
                    resolved.as_path()
                }
                Err(_) => dest, // dangling: replace the link
            },
            _ => dest,
        };
        if let Ok(md) = fs::metadata(dest) {
            if md.is_dir() {
                return Err(FsError::wrong_type(dest));
            }
        }
        ensure_parent(dest, parents)?;
        let parent = parent_of(dest)?;
        let name = dest
            .file_name()
            .ok_or_else(|| FsError::invalid(format!("invalid request: {}", dest.display())))?;
        let tmp = parent.join(format!(
            ".{}.iii-tmp-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = ctx(
            dest,
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o7777)
                .open(&tmp),
        )?;
        let f = Self {
            dest: dest.into(),
            tmp,
            file: Some(file),
            written: 0,
        };
        // The requested bits exactly, whatever the umask.
        if let Some(file) = &f.file {
            ctx(
                dest,
                file.set_permissions(fs::Permissions::from_mode(mode & 0o7777)),
            )?;
        }
        Ok(f)
    }

    pub fn write(&mut self, data: &[u8]) -> FsResult<()> {
        let file = self.file.as_mut().expect("open until commit");
        ctx(&self.dest, file.write_all(data))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// fsync, rename over the destination, fsync the directory; returns the byte count.
    pub fn commit(mut self) -> FsResult<u64> {
        let file = self.file.take().expect("open until commit");
        ctx(&self.dest, file.sync_all())?;
        drop(file);
        ctx(&self.dest, fs::rename(&self.tmp, &self.dest))?;
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.written)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

fn write_all(path: &Path, mode: u32, parents: bool, data: &[u8]) -> FsResult<u64> {
    let mut f = AtomicFile::create(path, mode, parents)?;
    f.write(data)?;
    f.commit()
}

/// A streamed write in progress: chunks arrive as `Stdin` frames. A failure
/// is kept and reported once the client has sent the end frame.
pub struct WriteStream(Result<AtomicFile, FsError>);

impl WriteStream {
    pub fn begin(path: &str, mode: u32, parents: bool) -> Self {
        Self(AtomicFile::create(Path::new(path), mode, parents))
    }

    pub fn push(&mut self, data: &[u8]) {
        if let Ok(f) = &mut self.0 {
            if let Err(e) = f.write(data) {
                self.0 = Err(e);
            }
        }
    }

    pub fn finish(self) -> FsResponse {
        match self.0.and_then(AtomicFile::commit) {
            Ok(n) => FsResponse {
                value: Some(json!({ "bytes_written": n })),
                ..Default::default()
            },
            Err(e) => e.into_response(),
        }
    }
}

/// Streams a file: `FsMeta`, `FsData` chunks, then the closing `FsResult`
/// payload (returned, for the caller to send). `send` returns false when the
/// client is gone.
pub fn read_stream(path: &str, mut send: impl FnMut(&Frame) -> bool) -> FsResponse {
    let p = Path::new(path);
    let opened = ctx(p, File::open(p)).and_then(|f| {
        let md = ctx(p, f.metadata())?;
        if md.is_dir() {
            return Err(FsError::wrong_type(p));
        }
        Ok((f, md))
    });
    let (mut f, md) = match opened {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    if !send(&Frame::with_json(Kind::FsMeta, &info(path.into(), &md))) {
        return FsResponse::default();
    }
    let mut buf = vec![0u8; FS_CHUNK];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n as u64;
                if !send(&Frame::new(Kind::FsData, buf[..n].to_vec())) {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return FsError::io(p, &e).into_response(),
        }
    }
    FsResponse {
        value: Some(json!({ "bytes_read": total })),
        ..Default::default()
    }
}

fn mkdir(path: &Path, mode: u32, parents: bool) -> FsResult<bool> {
    // `mkdir -p` accepts an existing directory, also through a symlink.
    match fs::symlink_metadata(path) {
        Ok(_) if parents && fs::metadata(path).is_ok_and(|m| m.is_dir()) => return Ok(false),
        Ok(_) => {
            return Err(FsError::new(
                codes::EXISTS,
                format!("already exists: {}", path.display()),
            ))
        }
        Err(_) => {}
    }
    ensure_parent(path, parents)?;
    match fs::create_dir(path) {
        Ok(()) => {}
        // Lost a race with another creator: same answer as above.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && parents => return Ok(false),
        Err(e) => return Err(FsError::io(path, &e)),
    }
    ctx(
        path,
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)),
    )?;
    Ok(true)
}

fn remove(path: &Path, recursive: bool) -> FsResult<()> {
    let md = ctx(path, fs::symlink_metadata(path))?;
    if md.is_dir() {
        if recursive {
            ctx(path, fs::remove_dir_all(path))
        } else {
            ctx(path, fs::remove_dir(path))
        }
    } else {
        ctx(path, fs::remove_file(path))
    }
}

fn chmod(
    path: &Path,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    recursive: bool,
) -> FsResult<u64> {
    let md = ctx(path, fs::symlink_metadata(path))?;
    let mut n = 0;
    chmod_one(path, &md, mode, uid, gid, &mut n)?;
    if recursive && md.is_dir() {
        walk(path, true, &mut |p, md| {
            if !md.file_type().is_symlink() {
                chmod_one(p, md, mode, uid, gid, &mut n)?;
            }
            Ok(true)
        })?;
    }
    Ok(n)
}

fn chmod_one(
    path: &Path,
    md: &Metadata,
    mode: u32,
    uid: Option<u32>,
    gid: Option<u32>,
    n: &mut u64,
) -> FsResult<()> {
    if uid.is_some() || gid.is_some() {
        ctx(path, std::os::unix::fs::lchown(path, uid, gid))?;
    }
    // chmod follows symlinks and a link's own bits mean nothing on Linux.
    if !md.file_type().is_symlink() {
        ctx(
            path,
            fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777)),
        )?;
    }
    *n += 1;
    Ok(())
}

/// Visits everything below `dir` (sorted, depth first, symlinks not
/// followed). `f` returns whether to descend into a directory.
fn walk(
    dir: &Path,
    recursive: bool,
    f: &mut dyn FnMut(&Path, &Metadata) -> FsResult<bool>,
) -> FsResult<()> {
    let mut entries: Vec<PathBuf> = ctx(dir, fs::read_dir(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        let descend = f(&p, &md)?;
        if recursive && descend && md.is_dir() {
            walk(&p, recursive, f)?;
        }
    }
    Ok(())
}

fn rename(src: &Path, dst: &Path, overwrite: bool) -> FsResult<()> {
    let src_md = ctx(src, fs::symlink_metadata(src))?;
    if !overwrite && fs::symlink_metadata(dst).is_ok() {
        return Err(FsError::new(
            codes::EXISTS,
            format!("already exists: {}", dst.display()),
        ));
    }
    ensure_parent(dst, false)?;
    let r = if overwrite {
        fs::rename(src, dst)
    } else {
        rename_noreplace(src, dst)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Err(FsError::new(
            codes::EXISTS,
            format!("already exists: {}", dst.display()),
        )),
        // Another filesystem (e.g. /tmp's tmpfs and the overlay root): copy a
        // regular file atomically, then drop the source.
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) && src_md.is_file() => {
            let mut out = AtomicFile::create(dst, src_md.mode(), false)?;
            let mut input = ctx(src, File::open(src))?;
            let mut buf = vec![0u8; FS_CHUNK];
            loop {
                let n = ctx(src, input.read(&mut buf))?;
                if n == 0 {
                    break;
                }
                out.write(&buf[..n])?;
            }
            out.commit()?;
            ctx(src, fs::remove_file(src))
        }
        Err(e) => Err(FsError::io(dst, &e)),
    }
}

/// `rename` that fails with EEXIST instead of replacing, so the check above
/// cannot race with a creator; falls back to a plain rename where the
/// filesystem lacks `RENAME_NOREPLACE`.
fn rename_noreplace(src: &Path, dst: &Path) -> io::Result<()> {
    let s = CString::new(src.as_os_str().as_bytes())?;
    let d = CString::new(dst.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            s.as_ptr(),
            libc::AT_FDCWD,
            d.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EINVAL | libc::ENOSYS) => fs::rename(src, dst),
        _ => Err(e),
    }
}

/// Shell-style globs compiled to regexes: `*` and `?` stay within one path
/// component, `**` crosses them, `[...]` and `{a,b}` as usual. A glob with a
/// `/` matches the path below the search root, one without matches the name.
pub struct Globs(Vec<(bool, regex::Regex)>);

impl Globs {
    pub fn new(globs: &[String]) -> FsResult<Self> {
        let mut v = Vec::new();
        for g in globs {
            let re = regex::Regex::new(&glob_regex(g))
                .map_err(|e| FsError::invalid(format!("invalid request: bad glob {g:?}: {e}")))?;
            v.push((g.contains('/'), re));
        }
        Ok(Self(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, rel: &str) -> bool {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        self.0
            .iter()
            .any(|(full, re)| re.is_match(if *full { rel } else { name }))
    }
}

fn glob_regex(g: &str) -> String {
    let c: Vec<char> = g.chars().collect();
    let mut re = String::from("^");
    let mut braces = 0;
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '*' if c.get(i + 1) == Some(&'*') => {
                if c.get(i + 2) == Some(&'/') {
                    re.push_str("(?:.*/)?");
                    i += 2;
                } else {
                    re.push_str(".*");
                    i += 1;
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                let mut j = i + 1;
                let mut class = String::from("[");
                if matches!(c.get(j), Some('!' | '^')) {
                    class.push('^');
                    j += 1;
                }
                let first = j;
                while j < c.len() && (c[j] != ']' || j == first) {
                    if matches!(c[j], '\\' | '[' | '&' | '~') || (c[j] == ']' && j == first) {
                        class.push('\\');
                    }
                    class.push(c[j]);
                    j += 1;
                }
                if j < c.len() {
                    class.push(']');
                    re.push_str(&class);
                    i = j;
                } else {
                    re.push_str("\\[");
                }
            }
            '{' => {
                braces += 1;
                re.push_str("(?:");
            }
            '}' if braces > 0 => {
                braces -= 1;
                re.push(')');
            }
            ',' if braces > 0 => re.push('|'),
            ch => re.push_str(&regex::escape(ch.encode_utf8(&mut [0; 4]))),
        }
        i += 1;
    }
    re.push('$');
    re
}

/// The files a grep or sed visits below `root`: regular files, sorted,
/// filtered by the globs (an excluded directory is not entered).
fn select_files(
    root: &Path,
    recursive: bool,
    include: &Globs,
    exclude: &Globs,
) -> FsResult<Vec<PathBuf>> {
    let mut out = Vec::new();
    walk(root, recursive, &mut |p, md| {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned();
        if exclude.matches(&rel) {
            return Ok(false);
        }
        if md.is_file() && (include.is_empty() || include.matches(&rel)) {
            out.push(p.to_path_buf());
        }
        Ok(true)
    })?;
    Ok(out)
}

/// A NUL in the first 8 KiB marks a binary file (as grep does).
fn looks_binary(head: &[u8]) -> bool {
    head[..head.len().min(8192)].contains(&0)
}

fn compile(pattern: &str, literal: bool, ignore_case: bool) -> FsResult<regex::bytes::Regex> {
    let p = if literal {
        regex::escape(pattern)
    } else {
        pattern.to_string()
    };
    regex::bytes::RegexBuilder::new(&p)
        .case_insensitive(ignore_case)
        .build()
        .map_err(|e| FsError::new(codes::REGEX, format!("invalid regex pattern: {e}")))
}

struct GrepArgs<'a> {
    root: &'a Path,
    pattern: &'a str,
    recursive: bool,
    ignore_case: bool,
    include: &'a [String],
    exclude: &'a [String],
    max_matches: usize,
    max_line_bytes: usize,
}

fn cut_line(line: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(line);
    if s.len() <= max {
        return s.into_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn grep(a: &GrepArgs) -> FsResult<Value> {
    let re = compile(a.pattern, false, a.ignore_case)?;
    let md = ctx(a.root, fs::metadata(a.root))?;
    let files = if md.is_dir() {
        let (inc, exc) = (Globs::new(a.include)?, Globs::new(a.exclude)?);
        select_files(a.root, a.recursive, &inc, &exc)?
    } else {
        vec![a.root.to_path_buf()]
    };
    let mut matches = Vec::new();
    let mut truncated = false;
    // The answer is one frame: stop (truncated) before it could overflow.
    let mut budget = MAX_RESULT / 2;
    'files: for path in files {
        // Unreadable files are skipped, as grep -s does: one bad file must
        // not hide every other match.
        let Ok(f) = File::open(&path) else { continue };
        let mut r = BufReader::new(f);
        match r.fill_buf() {
            Ok(head) if !looks_binary(head) => {}
            _ => continue,
        }
        let mut line = Vec::new();
        let mut no = 0u64;
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            no += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            if re.is_match(text) {
                let content = cut_line(text, a.max_line_bytes);
                let cost = content.len() + path.as_os_str().len() + 48;
                if matches.len() >= a.max_matches || cost > budget {
                    truncated = true;
                    break 'files;
                }
                budget -= cost;
                matches.push(json!({
                    "path": path.to_string_lossy(),
                    "line": no,
                    "content": content,
                }));
            }
        }
    }
    Ok(json!({ "matches": matches, "truncated": truncated }))
}

struct SedArgs<'a> {
    files: &'a [String],
    path: Option<&'a Path>,
    recursive: bool,
    include: &'a [String],
    exclude: &'a [String],
    pattern: &'a str,
    replacement: &'a str,
    regex: bool,
    first_only: bool,
    ignore_case: bool,
}

fn sed(a: &SedArgs) -> FsResult<Value> {
    let files: Vec<PathBuf> = match (a.files.is_empty(), a.path) {
        (false, None) => a.files.iter().map(PathBuf::from).collect(),
        (true, Some(root)) => {
            let md = ctx(root, fs::metadata(root))?;
            if md.is_dir() {
                if !a.recursive {
                    return Err(FsError::invalid(format!(
                        "{} is a directory: set recursive to edit the files below it",
                        root.display()
                    )));
                }
                let (inc, exc) = (Globs::new(a.include)?, Globs::new(a.exclude)?);
                select_files(root, true, &inc, &exc)?
                    .into_iter()
                    .filter(|p| {
                        File::open(p)
                            .ok()
                            .and_then(|f| BufReader::new(f).fill_buf().map(looks_binary).ok())
                            == Some(false)
                    })
                    .collect()
            } else {
                vec![root.to_path_buf()]
            }
        }
        _ => {
            return Err(FsError::invalid(
                "invalid request: give exactly one of `files` and `path`",
            ))
        }
    };
    let re = compile(a.pattern, !a.regex, a.ignore_case)?;
    let mut results = Vec::new();
    let mut total = 0u64;
    for path in files {
        match sed_file(&path, &re, a) {
            Ok(n) => {
                total += n;
                results.push(json!({
                    "path": path.to_string_lossy(), "replacements": n, "success": true,
                }));
            }
            Err(e) => results.push(json!({
                "path": path.to_string_lossy(), "replacements": 0, "success": false,
                "error": e.message,
            })),
        }
    }
    Ok(json!({ "results": results, "total_replacements": total }))
}

fn sed_file(path: &Path, re: &regex::bytes::Regex, a: &SedArgs) -> FsResult<u64> {
    let md = ctx(path, fs::metadata(path))?;
    if !md.is_file() {
        return Err(FsError::wrong_type(path));
    }
    let data = ctx(path, fs::read(path))?;
    let found = re.find_iter(&data).count() as u64;
    let n = if a.first_only { found.min(1) } else { found };
    if n == 0 {
        return Ok(0);
    }
    let limit = if a.first_only { 1 } else { 0 };
    let out = if a.regex {
        re.replacen(&data, limit, a.replacement.as_bytes())
    } else {
        re.replacen(
            &data,
            limit,
            regex::bytes::NoExpand(a.replacement.as_bytes()),
        )
    };
    let mut f = AtomicFile::create(path, md.mode(), false)?;
    f.write(&out)?;
    // Keep the owner of the file being edited (the temp file is root's).
    let _ = std::os::unix::fs::lchown(&f.tmp, Some(md.uid()), Some(md.gid()));
    f.commit()?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    //! Every op in-process against a temp dir (unprivileged: ownership
    //! changes are only tried to the current ids).
    use super::*;

    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "iii-fsops-{tag}-{}-{}",
                std::process::id(),
                TMP_SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&p).unwrap();
            Self(p)
        }
        fn p(&self, rel: &str) -> String {
            self.0.join(rel).to_string_lossy().into_owned()
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ok(req: FsRequest, data: &[u8]) -> (FsResponse, Vec<u8>) {
        let (r, d) = run(&req, data);
        assert_eq!(r.error, None, "{req:?}");
        (r, d)
    }

    fn err(req: FsRequest) -> (String, String) {
        let (r, _) = run(&req, b"");
        (r.code.expect("a code"), r.error.expect("a message"))
    }

    fn write(path: String, parents: bool) -> FsRequest {
        FsRequest::Write {
            path,
            mode: 0o640,
            parents,
            stream: false,
        }
    }

    #[test]
    fn write_is_atomic_and_honours_parents() {
        let t = Tmp::new("write");
        let (r, _) = ok(write(t.p("a.txt"), false), b"hello");
        assert_eq!(r.value, Some(json!({"bytes_written": 5})));
        assert_eq!(fs::read(t.p("a.txt")).unwrap(), b"hello");
        assert_eq!(fs::metadata(t.p("a.txt")).unwrap().mode() & 0o777, 0o640);
        // Overwrite leaves no temp files behind.
        ok(write(t.p("a.txt"), false), b"again");
        assert_eq!(fs::read_dir(&t.0).unwrap().count(), 1);
        // Through a symlink: the target changes, the link stays.
        std::os::unix::fs::symlink(t.p("a.txt"), t.p("link")).unwrap();
        ok(write(t.p("link"), false), b"via link");
        assert_eq!(fs::read(t.p("a.txt")).unwrap(), b"via link");
        assert!(fs::symlink_metadata(t.p("link"))
            .unwrap()
            .file_type()
            .is_symlink());
        fs::remove_file(t.p("link")).unwrap();
        let (code, msg) = err(write(t.p("x/y/b.txt"), false));
        assert_eq!(code, "S211");
        assert_eq!(msg, format!("parent directory not found: {}", t.p("x/y")));
        ok(write(t.p("x/y/b.txt"), true), b"deep");
        assert_eq!(fs::read(t.p("x/y/b.txt")).unwrap(), b"deep");
        // A directory in the way is the wrong type.
        assert_eq!(err(write(t.p("x"), false)).0, "S212");
    }

    #[test]
    fn streamed_write_commits_only_at_the_end() {
        let t = Tmp::new("wstream");
        let mut w = WriteStream::begin(&t.p("big"), 0o600, false);
        w.push(&[1u8; 100_000]);
        assert!(
            fs::metadata(t.p("big")).is_err(),
            "not visible before the end"
        );
        w.push(&[2u8; 5]);
        let r = w.finish();
        assert_eq!(r.value, Some(json!({"bytes_written": 100_005})));
        assert_eq!(fs::read(t.p("big")).unwrap().len(), 100_005);
        let r = WriteStream::begin(&t.p("no/such/f"), 0o600, false).finish();
        assert_eq!(r.code.as_deref(), Some("S211"));
    }

    #[test]
    fn read_stream_sends_meta_chunks_and_result() {
        let t = Tmp::new("rstream");
        let data: Vec<u8> = (0..200_000u32).map(|i| i.to_le_bytes()[0]).collect();
        fs::write(t.p("f"), &data).unwrap();
        let mut frames = Vec::new();
        let end = read_stream(&t.p("f"), |f| {
            frames.push(f.clone());
            true
        });
        assert_eq!(end.error, None);
        assert_eq!(frames[0].kind, Kind::FsMeta);
        let meta: FileInfo = frames[0].json().unwrap();
        assert_eq!(meta.size, 200_000);
        let mut got = Vec::new();
        for f in &frames[1..] {
            assert_eq!(f.kind, Kind::FsData);
            assert!(f.payload.len() <= FS_CHUNK);
            got.extend_from_slice(&f.payload);
        }
        assert_eq!(got, data);
        let end = read_stream(&t.0.to_string_lossy(), |_| true);
        assert_eq!(end.code.as_deref(), Some("S212"));
        let end = read_stream(&t.p("missing"), |_| true);
        assert_eq!(
            (end.code.as_deref(), end.error.unwrap()),
            (Some("S211"), format!("file not found: {}", t.p("missing")))
        );
    }

    #[test]
    fn whole_reads_are_bounded_by_the_frame() {
        let t = Tmp::new("bigread");
        let f = File::create(t.p("sparse")).unwrap();
        f.set_len(MAX_FRAME as u64).unwrap();
        let (code, msg) = err(FsRequest::Read {
            path: t.p("sparse"),
        });
        assert_eq!(code, "S210");
        assert!(msg.contains("use read_stream"), "{msg}");
    }

    #[test]
    fn mkdir_created_flag_and_errors() {
        let t = Tmp::new("mkdir");
        let mk = |p: String, parents| FsRequest::Mkdir {
            path: p,
            mode: 0o750,
            parents,
        };
        let (r, _) = ok(mk(t.p("a/b"), true), b"");
        assert_eq!(r.value, Some(json!({"created": true})));
        assert_eq!(fs::metadata(t.p("a/b")).unwrap().mode() & 0o777, 0o750);
        let (r, _) = ok(mk(t.p("a/b"), true), b"");
        assert_eq!(r.value, Some(json!({"created": false})));
        assert_eq!(err(mk(t.p("a/b"), false)).0, "S213");
        std::os::unix::fs::symlink(t.p("a"), t.p("l")).unwrap();
        let (r, _) = ok(mk(t.p("l"), true), b"");
        assert_eq!(r.value, Some(json!({"created": false})));
        fs::write(t.p("f"), b"").unwrap();
        assert_eq!(err(mk(t.p("f"), true)).0, "S213");
        assert_eq!(err(mk(t.p("q/r"), false)).0, "S211");
    }

    #[test]
    fn remove_codes() {
        let t = Tmp::new("rm");
        fs::create_dir_all(t.p("d/e")).unwrap();
        fs::write(t.p("d/e/f"), b"x").unwrap();
        let rm = |p: String, recursive| FsRequest::Remove { path: p, recursive };
        assert_eq!(err(rm(t.p("d"), false)).0, "S214");
        assert_eq!(
            err(rm(t.p("nope"), false)),
            ("S211".into(), format!("file not found: {}", t.p("nope")))
        );
        let (r, _) = ok(rm(t.p("d"), true), b"");
        assert_eq!(r.value, Some(json!({"removed": true})));
        assert!(fs::symlink_metadata(t.p("d")).is_err());
    }

    #[test]
    fn stat_and_list_do_not_follow_symlinks() {
        let t = Tmp::new("stat");
        fs::write(t.p("file"), b"12345").unwrap();
        std::os::unix::fs::symlink(t.p("file"), t.p("link")).unwrap();
        let (r, _) = ok(FsRequest::Stat { path: t.p("link") }, b"");
        assert!(r.entries[0].is_symlink);
        assert!(r.entries[0].mtime > 1_600_000_000);
        let (r, _) = ok(FsRequest::List { path: t.p("") }, b"");
        let names: Vec<_> = r
            .entries
            .iter()
            .map(|e| (e.name.as_str(), e.is_symlink, e.size))
            .collect();
        assert_eq!(names[0], ("file", false, 5));
        assert_eq!((names[1].0, names[1].1), ("link", true));
        assert_eq!(err(FsRequest::List { path: t.p("file") }).0, "S212");
        assert_eq!(err(FsRequest::Read { path: t.p("") }).0, "S212");
    }

    #[test]
    fn chmod_counts_and_recurses() {
        let t = Tmp::new("chmod");
        fs::create_dir_all(t.p("d/s")).unwrap();
        fs::write(t.p("d/a"), b"").unwrap();
        fs::write(t.p("d/s/b"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", t.p("d/l")).unwrap();
        // SAFETY: plain id getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (r, _) = ok(
            FsRequest::Chmod {
                path: t.p("d"),
                mode: 0o700,
                uid: Some(uid),
                gid: Some(gid),
                recursive: true,
            },
            b"",
        );
        // d, d/a, d/s, d/s/b; the symlink is not touched.
        assert_eq!(r.value, Some(json!({"updated": 4})));
        assert_eq!(fs::metadata(t.p("d/s/b")).unwrap().mode() & 0o777, 0o700);
        assert_ne!(fs::metadata("/etc/passwd").unwrap().mode() & 0o777, 0o700);
        let (r, _) = ok(
            FsRequest::Chmod {
                path: t.p("d/a"),
                mode: 0o644,
                uid: None,
                gid: None,
                recursive: false,
            },
            b"",
        );
        assert_eq!(r.value, Some(json!({"updated": 1})));
    }

    #[test]
    fn rename_overwrite_rules() {
        let t = Tmp::new("mv");
        fs::write(t.p("a"), b"A").unwrap();
        fs::write(t.p("b"), b"B").unwrap();
        let mv = |s: String, d: String, overwrite| FsRequest::Rename {
            src: s,
            dst: d,
            overwrite,
        };
        assert_eq!(err(mv(t.p("a"), t.p("b"), false)).0, "S213");
        let (r, _) = ok(mv(t.p("a"), t.p("b"), true), b"");
        assert_eq!(r.value, Some(json!({"moved": true})));
        assert_eq!(fs::read(t.p("b")).unwrap(), b"A");
        ok(mv(t.p("b"), t.p("c"), false), b"");
        assert_eq!(err(mv(t.p("b"), t.p("d"), false)).0, "S211");
        assert_eq!(err(mv(t.p("c"), t.p("no/c"), false)).0, "S211");
    }

    fn grep_req(path: String, pattern: &str) -> FsRequest {
        FsRequest::Grep {
            path,
            pattern: pattern.into(),
            recursive: true,
            ignore_case: false,
            include_glob: vec![],
            exclude_glob: vec![],
            max_matches: 10_000,
            max_line_bytes: 4096,
        }
    }

    #[test]
    fn grep_matches_globs_binary_and_limits() {
        let t = Tmp::new("grep");
        fs::create_dir_all(t.p("src/deep")).unwrap();
        fs::create_dir_all(t.p("target")).unwrap();
        fs::write(t.p("src/a.rs"), "fn main() {}\nlet x = 1;\nFN upper\n").unwrap();
        fs::write(t.p("src/deep/b.rs"), "fn helper() {}\n").unwrap();
        fs::write(t.p("src/notes.txt"), "fn in text\n").unwrap();
        fs::write(t.p("target/c.rs"), "fn built() {}\n").unwrap();
        fs::write(t.p("bin.rs"), b"fn \0 binary\n").unwrap();
        let (r, _) = ok(grep_req(t.p(""), "^fn"), b"");
        let v = r.value.unwrap();
        let m = v["matches"].as_array().unwrap();
        let got: Vec<(String, u64)> = m
            .iter()
            .map(|m| {
                let p = m["path"].as_str().unwrap();
                (
                    p.strip_prefix(&t.p("")).unwrap().to_string(),
                    m["line"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("src/a.rs".to_string(), 1),
                ("src/deep/b.rs".into(), 1),
                ("src/notes.txt".into(), 1),
                ("target/c.rs".into(), 1)
            ]
        );
        assert_eq!(m[0]["content"], "fn main() {}");
        assert_eq!(v["truncated"], false);
        let mut req = grep_req(t.p(""), "^fn");
        if let FsRequest::Grep {
            include_glob,
            exclude_glob,
            ignore_case,
            ..
        } = &mut req
        {
            *include_glob = vec!["*.rs".into()];
            *exclude_glob = vec!["target".into()];
            *ignore_case = true;
        }
        let v = ok(req, b"").0.value.unwrap();
        let paths: Vec<&str> = v["matches"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap())
            .collect();
        assert_eq!(paths, vec!["fn main() {}", "FN upper", "fn helper() {}"]);
        let mut req = grep_req(t.p("src"), "fn");
        if let FsRequest::Grep {
            max_matches,
            max_line_bytes,
            recursive,
            ..
        } = &mut req
        {
            *max_matches = 1;
            *max_line_bytes = 4;
            *recursive = false;
        }
        let v = ok(req, b"").0.value.unwrap();
        assert_eq!(v["matches"].as_array().unwrap().len(), 1);
        assert_eq!(v["matches"][0]["content"], "fn m…");
        assert_eq!(v["truncated"], true);
        assert_eq!(err(grep_req(t.p(""), "(")).0, "S217");
        assert_eq!(err(grep_req(t.p("missing"), "x")).0, "S211");
    }

    #[test]
    fn globs() {
        let g = Globs::new(&[
            "*.{rs,toml}".into(),
            "docs/**/*.md".into(),
            "[!x]?.c".into(),
        ])
        .unwrap();
        assert!(g.matches("src/main.rs"));
        assert!(g.matches("Cargo.toml"));
        assert!(g.matches("docs/a/b/c.md"));
        assert!(g.matches("docs/c.md"));
        assert!(!g.matches("other/c.md"));
        assert!(g.matches("ab.c"));
        assert!(!g.matches("xb.c"));
        assert!(!g.matches("main.rsx"));
        assert!(Globs::new(&["{a,b".into()]).is_err());
    }

    fn sed_req(files: Vec<String>, path: Option<String>, pattern: &str, repl: &str) -> FsRequest {
        FsRequest::Sed {
            files,
            path,
            recursive: true,
            include_glob: vec![],
            exclude_glob: vec![],
            pattern: pattern.into(),
            replacement: repl.into(),
            regex: true,
            first_only: false,
            ignore_case: false,
        }
    }

    #[test]
    fn sed_rewrites_files_and_reports_each() {
        let t = Tmp::new("sed");
        fs::create_dir_all(t.p("d/sub")).unwrap();
        fs::write(t.p("d/a.txt"), "foo foo\nbar\n").unwrap();
        fs::write(t.p("d/sub/b.txt"), "foo\n").unwrap();
        fs::write(t.p("d/bin"), b"foo\0").unwrap();
        fs::set_permissions(t.p("d/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        let (r, _) = ok(sed_req(vec![], Some(t.p("d")), "f(o+)", "g$1"), b"");
        let v = r.value.unwrap();
        assert_eq!(v["total_replacements"], 3);
        assert_eq!(v["results"].as_array().unwrap().len(), 2, "binary skipped");
        assert_eq!(
            fs::read_to_string(t.p("d/a.txt")).unwrap(),
            "goo goo\nbar\n"
        );
        assert_eq!(fs::metadata(t.p("d/a.txt")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read(t.p("d/bin")).unwrap(), b"foo\0");
        // Literal mode, first only, a missing file reported per file.
        let mut req = sed_req(vec![t.p("d/a.txt"), t.p("d/none")], None, "o.", "$X");
        if let FsRequest::Sed {
            regex, first_only, ..
        } = &mut req
        {
            *regex = false;
            *first_only = true;
        }
        let (r, _) = ok(req, b"");
        let v = r.value.unwrap();
        assert_eq!(v["total_replacements"], 0);
        fs::write(t.p("d/a.txt"), "a o. o.\n").unwrap();
        let mut req = sed_req(vec![t.p("d/a.txt"), t.p("d/none")], None, "o.", "$X");
        if let FsRequest::Sed {
            regex, first_only, ..
        } = &mut req
        {
            *regex = false;
            *first_only = true;
        }
        let v = ok(req, b"").0.value.unwrap();
        assert_eq!(v["total_replacements"], 1);
        assert_eq!(fs::read_to_string(t.p("d/a.txt")).unwrap(), "a $X o.\n");
        assert_eq!(v["results"][1]["success"], false);
        assert_eq!(
            v["results"][1]["error"],
            format!("file not found: {}", t.p("d/none"))
        );
        // A directory without recursive, both / neither selectors, bad regex.
        let mut req = sed_req(vec![], Some(t.p("d")), "x", "y");
        if let FsRequest::Sed { recursive, .. } = &mut req {
            *recursive = false;
        }
        assert_eq!(err(req).0, "S210");
        assert_eq!(err(sed_req(vec![], None, "x", "y")).0, "S210");
        assert_eq!(
            err(sed_req(vec![t.p("d/a.txt")], Some(t.p("d")), "x", "y")).0,
            "S210"
        );
        assert_eq!(err(sed_req(vec![t.p("d/a.txt")], None, "(", "y")).0, "S217");
    }

    #[test]
    fn unknown_and_malformed_headers() {
        let bad: Value = json!({"op": "teleport", "path": "/"});
        let e = serde_json::from_value::<FsRequest>(bad.clone()).unwrap_err();
        assert_eq!(undecodable(&bad, &e).code.as_deref(), Some("S219"));
        let bad: Value = json!({"op": "grep", "path": "/"});
        let e = serde_json::from_value::<FsRequest>(bad.clone()).unwrap_err();
        assert_eq!(undecodable(&bad, &e).code.as_deref(), Some("S210"));
    }

    #[test]
    fn known_ops_cover_every_request() {
        let all = [
            FsRequest::Read { path: "/".into() },
            write("/".into(), false),
            FsRequest::Mkdir {
                path: "/".into(),
                mode: 0,
                parents: true,
            },
            FsRequest::Remove {
                path: "/".into(),
                recursive: false,
            },
            FsRequest::List { path: "/".into() },
            FsRequest::Stat { path: "/".into() },
            FsRequest::ReadStream { path: "/".into() },
            FsRequest::Chmod {
                path: "/".into(),
                mode: 0,
                uid: None,
                gid: None,
                recursive: false,
            },
            FsRequest::Rename {
                src: "/".into(),
                dst: "/".into(),
                overwrite: false,
            },
            grep_req("/".into(), "x"),
            sed_req(vec![], None, "x", "y"),
        ];
        let tags: Vec<String> = all
            .iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(tags, KNOWN_OPS);
    }
}
