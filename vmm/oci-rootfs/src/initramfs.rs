//! A newc-format cpio archive with `/init` and a `/dev/console` node: an
//! initramfs without `/dev/console` leaves init with no stdout.

use std::io::{self, Write};

/// Why an entry cannot go into a newc archive.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// newc headers store the data and name lengths in 32-bit fields.
    #[error("{name}: its {what} of {len} bytes does not fit the newc format's 32-bit field")]
    TooLarge {
        /// The entry's path in the archive.
        name: String,
        /// Which length overflowed: `contents` or `name`.
        what: &'static str,
        /// That length in bytes.
        len: usize,
    },
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> Result<(), InitramfsError> {
    let field = |what, len: usize| {
        u32::try_from(len).map_err(|_| InitramfsError::TooLarge {
            name: name.into(),
            what,
            len,
        })
    };
    let filesize = field("contents", size)?;
    let namesize = field("name", name.len() + 1)?;
    let fields = [
        ino, mode, 0, 0, 1, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Builds the archive: `/dev`, `/dev/console` (c 5:1) and `/init` (0755),
/// plus any extra files given as (path, mode, contents).
pub fn build(init: &[u8], extra: &[(&str, u32, &[u8])]) -> Result<Vec<u8>, InitramfsError> {
    let mut a = Archive::new();
    a.dir("dev", 0o755)
        .char_dev("dev/console", 0o600, 5, 1)
        .file("init", 0o755, init);
    for (path, mode, data) in extra {
        a.file(path, *mode, data);
    }
    a.finish()
}

/// Writes the archive [`build`] makes for `init` (and no extra files) to `w`.
pub fn write(w: &mut impl Write, init: &[u8]) -> io::Result<()> {
    let archive = build(init, &[]).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&archive)
}

/// A general newc archive: directories, files, symlinks and device nodes,
/// written in the order added (parents first, as the kernel unpacker needs).
/// The first entry that cannot be encoded is reported by [`Archive::finish`];
/// entries added after it are dropped.
pub struct Archive {
    out: Vec<u8>,
    ino: u32,
    error: Option<InitramfsError>,
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    /// An empty archive; inode numbers start at 1.
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
            error: None,
        }
    }

    fn entry(&mut self, mode: u32, data: &[u8], rdev: (u32, u32), name: &str) -> &mut Self {
        if self.error.is_some() {
            return self;
        }
        let name = name.trim_start_matches('/');
        match header(&mut self.out, self.ino, mode, data.len(), rdev, name) {
            Ok(()) => {
                self.out.extend_from_slice(data);
                pad4(&mut self.out);
                self.ino += 1;
            }
            Err(e) => self.error = Some(e),
        }
        self
    }

    /// Adds a directory with permission bits `mode`.
    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(0o040000 | mode, &[], (0, 0), path)
    }

    /// Adds a regular file with permission bits `mode` holding `data`.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(0o100000 | mode, data, (0, 0), path)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(0o120777, target.as_bytes(), (0, 0), path)
    }

    /// Adds a character device node `major:minor` with permission bits `mode`.
    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(0o020000 | mode, &[], (major, minor), path)
    }

    /// Appends the trailer and returns the archive bytes, or the first entry
    /// that could not be encoded.
    pub fn finish(mut self) -> Result<Vec<u8>, InitramfsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        header(&mut self.out, 0, 0, 0, (0, 0), "TRAILER!!!")?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = build(b"#!init", &[]).unwrap();
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&a);
        assert!(text.contains("dev/console"));
        assert!(text.contains("TRAILER!!!"));
        // The console node: mode 020600, rdev 5:1.
        let i = text.find("dev/console").unwrap();
        let hdr = &text[i - 110..i];
        assert_eq!(&hdr[14..22], "00002180");
        assert_eq!(&hdr[78..86], "00000005");
        assert_eq!(&hdr[86..94], "00000001");
    }

    #[test]
    fn archive_with_tree() {
        let mut a = Archive::new();
        a.dir("bin", 0o755)
            .file("bin/x", 0o755, b"x")
            .symlink("bin/y", "x")
            .char_dev("dev/null", 0o666, 1, 3);
        let data = a.finish().unwrap();
        let text = String::from_utf8_lossy(&data);
        for n in ["bin/x", "bin/y", "dev/null", "TRAILER!!!"] {
            assert!(text.contains(n), "{n}");
        }
        assert_eq!(data.len() % 4, 0);
    }

    #[test]
    fn cpio_tool_reads_it() {
        let Ok(st) = std::process::Command::new("cpio").arg("--version").output() else {
            panic!("cpio is required for this test (apt-get install cpio)");
        };
        assert!(st.status.success());
        let dir = tempfile::tempdir().unwrap();
        let arc = dir.path().join("i.cpio");
        std::fs::write(&arc, build(b"hello", &[("etc/x", 0o644, b"x")]).unwrap()).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -it < {}", arc.display()))
            .output()
            .unwrap();
        let list = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            list.lines().collect::<Vec<_>>(),
            vec!["dev", "dev/console", "init", "etc/x"]
        );
    }
}
