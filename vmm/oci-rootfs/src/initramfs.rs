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
