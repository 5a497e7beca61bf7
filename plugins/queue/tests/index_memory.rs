//! Measures what the index costs per message: heap bytes are counted by a wrapping global
//! allocator. Prints a table (`cargo test -p iii-queue --test index_memory -- --nocapture`);
//! the assertion is a generous bound that catches an index that holds payloads.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use iii_queue::store::{LeaseRequest, NewMessage, Options, Queues};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

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

const T0: u64 = 1_700_000_000_000;

#[test]
fn the_index_costs_bytes_per_message_not_per_payload_byte() {
    let dir = std::env::temp_dir().join(format!("iii-queue-mem-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let opts = || Options {
        fsync: false,
        ..Options::default()
    };
    let messages = 50_000usize;
    let payload = format!("{{\"pad\":\"{}\"}}", "p".repeat(1000));
    {
        let (mut q, _) = Queues::open(&dir, opts(), T0).unwrap();
        for i in 0..messages {
            // A UUID-sized id.
            let id = format!("{i:08}-0000-4000-8000-000000000000");
            let msg = NewMessage {
                id: &id,
                payload: &payload,
                meta: "{\"function_id\":\"orders::ship\"}",
                group: None,
                max_attempts: 3,
                delay_ms: 0,
            };
            q.enqueue("orders", msg, T0).unwrap();
        }
    }
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let (mut q, opened) = Queues::open(&dir, opts(), T0).unwrap();
    let live = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    assert_eq!(opened.live, messages as u64);
    let req = LeaseRequest {
        max: 1,
        lease_ms: 60_000,
        fifo: false,
    };
    let l = q.lease("orders", req, T0).unwrap();
    assert_eq!(l.deliveries[0].payload, payload, "read back from disk");
    println!(
        "| messages | id bytes | payload bytes | log bytes | index heap | per message | replay peak |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {messages} | 36 | {} | {} | {live} | {:.1} | {peak} |",
        payload.len(),
        q.log_bytes(),
        live as f64 / messages as f64
    );
    // Payloads are ~1 KiB each: an index that held them would pass 1000.
    assert!(
        live / messages < 600,
        "{} bytes per message",
        live / messages
    );
    drop(q);
    std::fs::remove_dir_all(&dir).unwrap();
}
