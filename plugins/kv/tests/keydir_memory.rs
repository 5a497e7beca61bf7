//! Measures what the keydir costs per key and that replay and compaction
//! stream: heap bytes are counted by a wrapping global allocator. Prints a
//! table (`cargo test -p iii-kv --test keydir_memory -- --nocapture`); the
//! assertions are generous bounds that catch a store that buffers values.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use iii_kv::store::{Kv, Options};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The counters are process-wide: measurements run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards to the system allocator unchanged; only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed through to `System`.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: the caller's contract is passed through to `System`.
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn temp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("iii-kv-mem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn fast() -> Options {
    Options {
        fsync: false,
        ..Options::default()
    }
}

/// Runs `f` and returns its result, the heap it left allocated and its peak.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    (r, live, peak)
}

#[test]
fn the_keydir_costs_bytes_per_key_not_per_value_byte() {
    let _g = SERIAL.lock().unwrap();
    let dir = temp("perkey");
    let keys = 100_000usize;
    {
        let (mut kv, _) = Kv::open(&dir, fast()).unwrap();
        for i in 0..keys {
            kv.state_set(
                "users",
                &format!("user-{i:08}"),
                format!("{{\"n\":{i},\"pad\":\"{}\"}}", "p".repeat(200)),
            )
            .unwrap();
        }
    }
    let ((kv, _), live, peak) = measure(|| Kv::open(&dir, fast()).unwrap());
    let log = kv.log_bytes();
    println!("| keys | key bytes | log bytes | keydir heap | per key | replay peak |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {keys} | 13 | {log} | {live} | {:.1} | {peak} |",
        live as f64 / keys as f64
    );
    // Values are ~215 bytes each: a keydir that held them would pass 200.
    assert!(live / keys < 150, "{} bytes per key", live / keys);
    drop(kv);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn replay_and_compaction_hold_one_record_not_the_log() {
    let _g = SERIAL.lock().unwrap();
    let dir = temp("stream");
    let mib = 1024 * 1024;
    let value = format!("\"{}\"", "v".repeat(mib));
    {
        let (mut kv, _) = Kv::open(
            &dir,
            Options {
                compact_min_bytes: u64::MAX,
                ..fast()
            },
        )
        .unwrap();
        // 64 MiB of values, half of them overwritten once.
        for round in 0..2 {
            for i in 0..(32 + 32 * (1 - round)) {
                kv.state_set("big", &format!("k{i}"), value.clone())
                    .unwrap();
            }
        }
    }
    let ((mut kv, opened), live, replay_peak) = measure(|| Kv::open(&dir, fast()).unwrap());
    let log = kv.log_bytes();
    let ((), _, compact_peak) = measure(|| kv.compact().unwrap());
    println!("| log bytes | records | keydir heap | replay peak | compaction peak | log after |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {log} | {} | {live} | {replay_peak} | {compact_peak} | {} |",
        opened.records,
        kv.log_bytes()
    );
    assert!(log > 90 * mib as u64);
    assert!(replay_peak < 4 * mib, "replay peak {replay_peak}");
    assert!(compact_peak < 4 * mib, "compaction peak {compact_peak}");
    assert_eq!(
        kv.state_get("big", "k40").unwrap().as_deref(),
        Some(value.as_str())
    );
    drop(kv);
    std::fs::remove_dir_all(&dir).unwrap();
}
