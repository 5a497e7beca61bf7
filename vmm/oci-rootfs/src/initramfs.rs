//! A newc-format cpio archive with `/init` and a `/dev/console` node: an
//! initramfs without `/dev/console` leaves init with no stdout.

use std::io::{self, Write};

fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0,
        0,
        1,
        0,
        size as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        namesize as u32,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Builds the archive: `/dev`, `/dev/console` (c 5:1) and `/init` (0755),
/// plus any extra files given as (path, mode, contents).
pub fn build(init: &[u8], extra: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ino = 1;
    let mut add = |out: &mut Vec<u8>, mode: u32, data: &[u8], rdev: (u32, u32), name: &str| {
        header(out, ino, mode, data.len(), rdev, name);
        out.extend_from_slice(data);
        pad4(out);
        ino += 1;
    };
    add(&mut out, 0o040755, &[], (0, 0), "dev");
    add(&mut out, 0o020600, &[], (5, 1), "dev/console");
    add(&mut out, 0o100755, init, (0, 0), "init");
    for (path, mode, data) in extra {
        add(
            &mut out,
            0o100000 | mode,
            data,
            (0, 0),
            path.trim_start_matches('/'),
        );
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

pub fn write(w: &mut impl Write, init: &[u8]) -> io::Result<()> {
    w.write_all(&build(init, &[]))
}

/// A general newc archive: directories, files, symlinks and device nodes,
/// written in the order added (parents first, as the kernel unpacker needs).
#[derive(Default)]
pub struct Archive {
    out: Vec<u8>,
    ino: u32,
}

impl Archive {
    pub fn new() -> Self {
        Self {
            out: Vec::new(),
            ino: 1,
        }
    }

    fn entry(&mut self, mode: u32, data: &[u8], rdev: (u32, u32), name: &str) -> &mut Self {
        header(
            &mut self.out,
            self.ino,
            mode,
            data.len(),
            rdev,
            name.trim_start_matches('/'),
        );
        self.out.extend_from_slice(data);
        pad4(&mut self.out);
        self.ino += 1;
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(0o040000 | mode, &[], (0, 0), path)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(0o100000 | mode, data, (0, 0), path)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(0o120777, target.as_bytes(), (0, 0), path)
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> &mut Self {
        self.entry(0o020000 | mode, &[], (major, minor), path)
    }

    pub fn finish(mut self) -> Vec<u8> {
        header(&mut self.out, 0, 0, 0, (0, 0), "TRAILER!!!");
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout() {
        let a = build(b"#!init", &[]);
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
        let data = a.finish();
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
        std::fs::write(&arc, build(b"hello", &[("etc/x", 0o644, b"x")])).unwrap();
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
