//! The on-disk format did not change when the log moved to `plugins/wal`: a log written by the
//! adapter before that (the hex below, from commit 0d1c073) opens, and the same writes today
//! produce the same bytes.

use iii_kv::store::{Kv, Options};

/// `kv.wal` after: set scope/a {"n":1}; set scope/b "ünï"; set scope/a [1,2,3];
/// delete scope/b; stream set st/g/i true.
const BEFORE_THE_MOVE: &str = "4949494b56574c32ff4b56a71c000000015fc9140100020500000073636f70650100000061070000007b226e223a317dff4b56a71c000000a081f6840100020500000073636f706501000000620700000022c3bc6ec3af22ff4b56a71c00000096d7ef3d0100020500000073636f70650100000061070000005b312c322c335dff4b56a711000000294df5360200020500000073636f70650100000062ff4b56a71b000000eec30c04010103020000007374010000006701000000690400000074727565";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("iii-kv-compat-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn a_log_from_before_the_shared_wal_opens_and_new_writes_match_it() {
    let old = tempdir("old");
    std::fs::write(old.join("kv.wal"), unhex(BEFORE_THE_MOVE)).unwrap();
    let (mut kv, opened) = Kv::open(&old, Options::default()).unwrap();
    assert_eq!((opened.records, opened.keys, opened.torn_tail), (5, 2, 0));
    assert_eq!(
        kv.state_get("scope", "a").unwrap().as_deref(),
        Some("[1,2,3]")
    );
    assert_eq!(kv.state_get("scope", "b").unwrap(), None);
    assert_eq!(
        kv.stream_get("st", "g", "i").unwrap().as_deref(),
        Some("true")
    );

    let new = tempdir("new");
    {
        let (mut kv, _) = Kv::open(&new, Options::default()).unwrap();
        kv.state_set("scope", "a", "{\"n\":1}".into()).unwrap();
        kv.state_set("scope", "b", "\"ünï\"".into()).unwrap();
        kv.state_set("scope", "a", "[1,2,3]".into()).unwrap();
        kv.state_delete("scope", "b").unwrap();
        kv.stream_set("st", "g", "i", "true".into()).unwrap();
    }
    assert_eq!(
        std::fs::read(new.join("kv.wal")).unwrap(),
        unhex(BEFORE_THE_MOVE)
    );
    let _ = std::fs::remove_dir_all(&old);
    let _ = std::fs::remove_dir_all(&new);
}
