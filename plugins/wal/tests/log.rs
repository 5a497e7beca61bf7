//! The log with a layout of its own (payloads are `tag u8 | UTF-8 text`), so what is tested
//! here is the framing and replay alone, not a kv or queue record.

use std::path::{Path, PathBuf};

use iii_wal::{Layout, Loc, OnCorruption, ShapeError, Wal, WalError};

/// A payload is a tag byte `b'T'` and UTF-8 text.
static TEXT: Layout = Layout {
    name: "text",
    file_name: "text.wal",
    magic: *b"IIITXWL1",
    legacy_magic: None,
    marker: [0xFF, b'T', b'X', 0xA7],
    check: |head, len| match head.first() {
        None => Err(ShapeError::Short),
        Some(b'T') if head.len() < len as usize => Err(ShapeError::Short),
        Some(b'T') => std::str::from_utf8(&head[1..])
            .map(|_| ())
            .map_err(|_| ShapeError::Invalid),
        Some(_) => Err(ShapeError::Invalid),
    },
    describe: |head| {
        let text = std::str::from_utf8(head.get(1..)?).ok()?;
        Some(text.to_string())
    },
};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("iii-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn log(&self) -> PathBuf {
        self.0.join("text.wal")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rec(text: &str) -> Vec<u8> {
    let mut p = vec![b'T'];
    p.extend_from_slice(text.as_bytes());
    p
}

/// Opens the log and returns it with the texts replayed, in order.
fn open(path: &Path, policy: OnCorruption) -> Result<(Wal, Vec<(String, Loc)>), WalError> {
    let mut seen = Vec::new();
    let (wal, _) = Wal::open(&TEXT, path, true, policy, |r| {
        seen.push((String::from_utf8(r.head[1..].to_vec()).unwrap(), r.loc));
        Ok(())
    })?;
    Ok((wal, seen))
}

fn texts(seen: &[(String, Loc)]) -> Vec<&str> {
    seen.iter().map(|(t, _)| t.as_str()).collect()
}

#[test]
fn records_replay_in_order_and_read_back_by_place() {
    let dir = Dir::new("replay");
    let locs: Vec<Loc> = {
        let (mut w, seen) = open(&dir.log(), OnCorruption::Refuse).unwrap();
        assert!(seen.is_empty());
        ["one", "two", "three"]
            .iter()
            .map(|t| w.append(&[&rec(t)]).unwrap())
            .collect()
    };
    let (mut w, seen) = open(&dir.log(), OnCorruption::Refuse).unwrap();
    assert_eq!(texts(&seen), ["one", "two", "three"]);
    assert_eq!(seen.iter().map(|(_, l)| *l).collect::<Vec<_>>(), locs);
    assert_eq!(w.read_payload(locs[1]).unwrap(), rec("two"));
    // Pieces are one payload.
    let l = w.append(&[b"T", b"fo", b"ur"]).unwrap();
    assert_eq!(w.read_payload(l).unwrap(), rec("four"));
}

#[test]
fn another_kind_of_log_is_not_opened() {
    let dir = Dir::new("magic");
    std::fs::write(dir.log(), b"IIIKVWL2 something else").unwrap();
    let err = open(&dir.log(), OnCorruption::Refuse).err().unwrap();
    assert!(err.to_string().contains("is not an iii text log"), "{err}");
}

#[test]
fn a_torn_tail_is_cut_and_damage_before_a_record_is_refused_or_salvaged() {
    let dir = Dir::new("damage");
    let locs: Vec<Loc> = {
        let (mut w, _) = open(&dir.log(), OnCorruption::Refuse).unwrap();
        ["a", "bb", "ccc"]
            .iter()
            .map(|t| w.append(&[&rec(t)]).unwrap())
            .collect()
    };
    let intact = std::fs::read(dir.log()).unwrap();
    let mut torn = intact.clone();
    torn.extend_from_slice(&[0xFF, b'T', b'X', 0xA7, 9, 0, 0]);
    std::fs::write(dir.log(), &torn).unwrap();
    {
        let (_, seen) = open(&dir.log(), OnCorruption::Refuse).unwrap();
        assert_eq!(texts(&seen), ["a", "bb", "ccc"]);
    }
    assert_eq!(
        std::fs::read(dir.log()).unwrap(),
        intact,
        "the torn bytes are cut"
    );

    let mut damaged = intact.clone();
    damaged[locs[1].off as usize + 13] ^= 0x01; // inside "bb"
    std::fs::write(dir.log(), &damaged).unwrap();
    let err = open(&dir.log(), OnCorruption::Refuse).err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains(&format!("text log {}", dir.log().display()))
            && text.contains(&format!("byte offset {}", locs[1].off))
            && text.contains("1 valid records follow"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(dir.log()).unwrap(),
        damaged,
        "refusing changes nothing"
    );

    let (mut w, report) =
        Wal::open(&TEXT, &dir.log(), true, OnCorruption::Salvage, |_| Ok(())).unwrap();
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.damage[0].offset, locs[1].off);
    assert_eq!(report.records, 2);
    let backup = report.backup.unwrap();
    assert_eq!(std::fs::read(&backup).unwrap(), damaged);
    // The caller rewrites the survivors; the log is then clean.
    w.rewrite(&[locs[0], locs[2]]).unwrap();
    drop(w);
    let (_, seen) = open(&dir.log(), OnCorruption::Refuse).unwrap();
    assert_eq!(texts(&seen), ["a", "ccc"]);
}

#[test]
fn rewrite_with_copies_and_adds_and_a_failed_fill_keeps_the_old_log() {
    let dir = Dir::new("rewrite");
    let (mut w, _) = open(&dir.log(), OnCorruption::Refuse).unwrap();
    let a = w.append(&[&rec("a")]).unwrap();
    let _dead = w.append(&[&rec("dead")]).unwrap();
    let before = std::fs::read(dir.log()).unwrap();
    let err = w
        .rewrite_with(|rw| {
            rw.copy(a)?;
            rw.copy(Loc { off: 1, len: 3 })
        })
        .unwrap_err();
    assert!(err.to_string().contains("byte offset 1"), "{err}");
    assert_eq!(std::fs::read(dir.log()).unwrap(), before);
    assert!(
        !dir.0.join("text.compact").exists(),
        "the side file is removed"
    );

    let (a2, b) = w
        .rewrite_with(|rw| Ok((rw.copy(a)?, rw.append(&[&rec("new")])?)))
        .unwrap();
    assert_eq!(w.read_payload(a2).unwrap(), rec("a"));
    assert_eq!(w.read_payload(b).unwrap(), rec("new"));
    let c = w.append(&[&rec("after")]).unwrap();
    drop(w);
    let (_, seen) = open(&dir.log(), OnCorruption::Refuse).unwrap();
    assert_eq!(texts(&seen), ["a", "new", "after"]);
    assert_eq!(seen[2].1, c);
}
