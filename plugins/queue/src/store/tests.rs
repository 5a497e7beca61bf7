//! The reference tests of `MemoryQueueStore` (host/adapter-api), ported to the store with an
//! explicit clock and run against both the in-memory and the durable store; then the log.

use super::*;
use std::path::PathBuf;

/// A fresh directory per test, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("iii-queue-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    fn wal(&self) -> PathBuf {
        self.0.join("queue.wal")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const T0: u64 = 1_700_000_000_000;

fn msg<'a>(
    id: &'a str,
    payload: &'a str,
    group: Option<&'a str>,
    max_attempts: u32,
) -> NewMessage<'a> {
    NewMessage {
        id,
        payload,
        meta: "{}",
        group,
        max_attempts,
        delay_ms: 0,
    }
}

const ONE: LeaseRequest = LeaseRequest {
    max: 10,
    lease_ms: 60_000,
    fifo: false,
};

/// Runs `f` on an in-memory store and on a durable one.
fn both(name: &str, f: impl Fn(&mut Queues)) {
    f(&mut Queues::in_memory(Options::default(), T0));
    let dir = TempDir::new(name);
    let (mut q, _) = Queues::open(&dir.0, Options::default(), T0).unwrap();
    f(&mut q);
}

fn ids(l: &Leased) -> Vec<&str> {
    l.deliveries.iter().map(|d| d.message_id.as_str()).collect()
}

#[test]
fn ack_deletes_and_a_stale_token_changes_nothing() {
    both("ack", |q| {
        q.enqueue("q", msg("a", "1", None, 3), T0).unwrap();
        q.enqueue("q", msg("a", "1", None, 3), T0).unwrap();
        let l = q.lease("q", ONE, T0).unwrap();
        assert_eq!(l.deliveries.len(), 1, "a repeated id is stored once");
        assert_eq!(l.deliveries[0].payload, "1");
        assert_eq!(l.deliveries[0].meta, "{}");
        assert_eq!(q.lease("q", ONE, T0).unwrap().deliveries.len(), 0);
        assert!(q.ack("q", &l.deliveries[0].token).unwrap());
        assert!(!q.ack("q", &l.deliveries[0].token).unwrap());
        assert_eq!(q.stats("q"), Stats::default());
        assert!(q.queues().is_empty());
        q.enqueue("q", msg("a", "2", None, 3), T0).unwrap();
        assert_eq!(q.stats("q").waiting, 1, "an acked id may be enqueued again");
    });
}

#[test]
fn nack_retries_then_dead_letters_and_redrive_resets() {
    both("nack", |q| {
        q.enqueue("q", msg("a", "1", None, 2), T0).unwrap();
        let d = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 1);
        assert_eq!(
            q.nack("q", &d.token, 0, "boom", T0).unwrap(),
            NackOutcome::Retrying
        );
        let d = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 2);
        assert_eq!(
            q.nack("q", &d.token, 0, "boom again", T0 + 5).unwrap(),
            NackOutcome::DeadLettered
        );
        assert_eq!(
            q.nack("q", &d.token, 0, "late", T0).unwrap(),
            NackOutcome::Stale
        );
        q.enqueue("q", msg("a", "dup", None, 2), T0).unwrap();
        let dead = q.dead_letters("q", 0, 10).unwrap();
        assert_eq!(dead.len(), 1, "a dead id is still held: enqueue is a no-op");
        assert_eq!(dead[0].error, "boom again");
        assert_eq!(dead[0].attempts, 2);
        assert_eq!(dead[0].payload, "1");
        assert_eq!(dead[0].failed_at_ms, T0 + 5);
        assert_eq!(
            q.stats("q"),
            Stats {
                waiting: 0,
                in_flight: 0,
                dead: 1
            }
        );
        assert_eq!(q.redrive("q", Some("nope"), T0).unwrap(), 0);
        assert_eq!(q.redrive("q", None, T0).unwrap(), 1);
        let d = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        assert_eq!(d.attempt, 1, "a redrive resets the attempts");
    });
}

#[test]
fn a_retry_delay_is_reported_as_next_due() {
    both("due", |q| {
        q.enqueue("q", msg("a", "1", None, 3), T0).unwrap();
        let d = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        q.nack("q", &d.token, 50_000, "later", T0).unwrap();
        let l = q.lease("q", ONE, T0 + 1_000).unwrap();
        assert!(l.deliveries.is_empty());
        assert_eq!(l.next_due_ms, Some(49_000));
        assert_eq!(ids(&q.lease("q", ONE, T0 + 50_000).unwrap()), ["a"]);
    });
}

#[test]
fn a_lapsed_lease_redelivers_and_counts_the_attempt() {
    both("lapse", |q| {
        q.enqueue("q", msg("a", "1", None, 3), T0).unwrap();
        let short = LeaseRequest { lease_ms: 0, ..ONE };
        let first = q.lease("q", short, T0).unwrap().deliveries.remove(0);
        let second = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        assert_eq!(second.attempt, 2);
        assert!(!q.ack("q", &first.token).unwrap(), "the first lease ended");
        assert!(q.ack("q", &second.token).unwrap());
    });
}

#[test]
fn a_lease_lapsing_on_the_last_attempt_dead_letters() {
    both("lapselast", |q| {
        q.enqueue("q", msg("a", "1", None, 1), T0).unwrap();
        let l = q
            .lease(
                "q",
                LeaseRequest {
                    lease_ms: 10,
                    ..ONE
                },
                T0,
            )
            .unwrap();
        assert_eq!(l.next_due_ms, Some(10), "the lease end is due");
        assert!(q.lease("q", ONE, T0 + 10).unwrap().deliveries.is_empty());
        let dead = q.dead_letters("q", 0, 10).unwrap();
        assert_eq!(dead[0].error, "the lease lapsed on the last attempt");
        assert_eq!(dead[0].attempts, 1);
    });
}

#[test]
fn fifo_hands_out_one_message_per_group_in_order_retries_included() {
    both("fifo", |q| {
        for (id, g) in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b")] {
            q.enqueue("q", msg(id, "0", Some(g), 3), T0).unwrap();
        }
        let fifo = LeaseRequest { fifo: true, ..ONE };
        let l = q.lease("q", fifo, T0).unwrap();
        assert_eq!(ids(&l), ["a1", "b1"]);
        assert!(q.lease("q", fifo, T0).unwrap().deliveries.is_empty());
        // a1 fails and waits for its retry: a2 must not overtake it.
        q.nack("q", &l.deliveries[0].token, 30_000, "x", T0)
            .unwrap();
        q.ack("q", &l.deliveries[1].token).unwrap();
        assert_eq!(ids(&q.lease("q", fifo, T0).unwrap()), ["b2"]);
    });
}

#[test]
fn delays_max_and_oversized_messages() {
    both("misc", |q| {
        let mut later = msg("later", "1", None, 0);
        later.delay_ms = 1_000;
        q.enqueue("q", later, T0).unwrap();
        for i in 0..5 {
            q.enqueue("q", msg(&format!("m{i}"), "1", None, 0), T0)
                .unwrap();
        }
        let l = q.lease("q", LeaseRequest { max: 2, ..ONE }, T0).unwrap();
        assert_eq!(ids(&l), ["m0", "m1"]);
        assert_eq!(l.deliveries[0].max_attempts, 1, "0 attempts count as 1");
        assert_eq!(l.next_due_ms, Some(1_000));
        let big = "x".repeat(DEFAULT_MAX_MESSAGE_BYTES);
        let err = q.enqueue("q", msg("big", &big, None, 1), T0).unwrap_err();
        assert!(
            err.is_invalid_input() && err.to_string().contains("max_message_bytes"),
            "{err}"
        );
        assert_eq!(
            q.stats("q"),
            Stats {
                waiting: 4,
                in_flight: 2,
                dead: 0
            }
        );
        assert_eq!(
            ids(&q.lease("q", ONE, T0 + 1_000).unwrap()),
            ["later", "m2", "m3", "m4"]
        );
    });
}

#[test]
fn discard_deletes_a_dead_letter_and_frees_its_id() {
    both("discard", |q| {
        q.enqueue("q", msg("a", "1", None, 1), T0).unwrap();
        let d = q.lease("q", ONE, T0).unwrap().deliveries.remove(0);
        q.nack("q", &d.token, 0, "x", T0).unwrap();
        assert!(!q.discard("q", "b").unwrap());
        assert!(q.discard("q", "a").unwrap());
        assert!(q.dead_letters("q", 0, 10).unwrap().is_empty());
        assert!(q.queues().is_empty());
        q.enqueue("q", msg("a", "2", None, 1), T0).unwrap();
        assert_eq!(q.stats("q").waiting, 1);
    });
}

// ---- the log ----

fn open(dir: &TempDir) -> (Queues, Opened) {
    Queues::open(&dir.0, Options::default(), T0).unwrap()
}

/// Offsets of every record (by walking the headers).
fn record_offsets(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut at = iii_wal::FILE_HEADER as usize;
    let mut out = Vec::new();
    while at + 12 <= bytes.len() {
        out.push(at as u64);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += 12 + len;
    }
    out
}

fn flip(path: &Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_reopened_store_has_every_message_every_lease_ended_and_the_counts_kept() {
    let dir = TempDir::new("reopen");
    {
        let (mut q, _) = open(&dir);
        for i in 0..5 {
            q.enqueue(
                "q",
                msg(&format!("m{i}"), &format!("{{\"n\":{i}}}"), None, 2),
                T0,
            )
            .unwrap();
        }
        q.enqueue("other", msg("x", "\"y\"", Some("g"), 1), T0)
            .unwrap();
        let l = q.lease("q", LeaseRequest { max: 3, ..ONE }, T0).unwrap();
        assert!(q.ack("q", &l.deliveries[0].token).unwrap()); // m0 gone
        q.nack("q", &l.deliveries[1].token, 5_000, "retry me", T0)
            .unwrap(); // m1 attempt 1
                       // m2 stays leased: the store "dies" with it in flight.
        let d = q.lease("other", ONE, T0).unwrap().deliveries.remove(0);
        q.nack("other", &d.token, 0, "dead", T0 + 7).unwrap();
    }
    let (mut q, opened) = open(&dir);
    assert_eq!((opened.live, opened.dead, opened.torn_tail), (4, 1, 0));
    assert!(
        q.queues
            .values()
            .flat_map(|q| q.live.values())
            .all(|l| matches!(l.body, Body::Disk(_))),
        "payloads stay on disk"
    );
    assert_eq!(
        q.stats("q"),
        Stats {
            waiting: 4,
            in_flight: 0,
            dead: 0
        }
    );
    let l = q.lease("q", ONE, T0 + 1).unwrap();
    assert_eq!(
        ids(&l),
        ["m2", "m3", "m4"],
        "m1 waits for its retry; m2's lease ended"
    );
    assert_eq!(l.deliveries[0].payload, "{\"n\":2}");
    assert_eq!(
        l.deliveries[0].attempt, 1,
        "a lease ended by a restart is not an attempt"
    );
    let l = q.lease("q", ONE, T0 + 5_000).unwrap();
    assert_eq!(ids(&l), ["m1"]);
    assert_eq!(l.deliveries[0].attempt, 2);
    let dead = q.dead_letters("other", 0, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].error.as_str(),
            dead[0].failed_at_ms,
            dead[0].group.as_deref()
        ),
        ("dead", T0 + 7, Some("g"))
    );
    assert_eq!(q.queues(), ["other", "q"]);
}

#[test]
fn tokens_of_a_previous_instance_are_stale() {
    let dir = TempDir::new("epoch");
    let token = {
        let (mut q, _) = open(&dir);
        q.enqueue("q", msg("a", "1", None, 3), T0).unwrap();
        q.lease("q", ONE, T0).unwrap().deliveries.remove(0).token
    };
    let (mut q, _) = Queues::open(&dir.0, Options::default(), T0 + 1).unwrap();
    let again = q.lease("q", ONE, T0 + 1).unwrap().deliveries.remove(0);
    assert_ne!(again.token, token);
    assert!(!q.ack("q", &token).unwrap());
    assert_eq!(q.nack("q", &token, 0, "x", T0).unwrap(), NackOutcome::Stale);
    assert!(q.ack("q", &again.token).unwrap());
}

#[test]
fn redrive_and_discard_survive_a_reopen() {
    let dir = TempDir::new("redrive");
    {
        let (mut q, _) = open(&dir);
        for id in ["a", "b", "c"] {
            q.enqueue("q", msg(id, "1", None, 1), T0).unwrap();
        }
        for d in q.lease("q", ONE, T0).unwrap().deliveries {
            q.nack("q", &d.token, 0, &format!("{} failed", d.message_id), T0)
                .unwrap();
        }
        assert!(q.discard("q", "b").unwrap());
        assert_eq!(q.redrive("q", Some("c"), T0).unwrap(), 1);
        q.enqueue("q", msg("d", "1", None, 1), T0).unwrap();
    }
    let (mut q, _) = open(&dir);
    let dead = q.dead_letters("q", 0, 10).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| d.message_id.as_str())
            .collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(dead[0].error, "a failed");
    assert_eq!(
        ids(&q.lease("q", ONE, T0).unwrap()),
        ["c", "d"],
        "a redrive goes to the back"
    );
    assert_eq!(q.redrive("q", None, T0).unwrap(), 1);
    drop(q);
    let (q, _) = open(&dir);
    assert_eq!(
        q.stats("q"),
        Stats {
            waiting: 3,
            in_flight: 0,
            dead: 0
        }
    );
}

#[test]
fn a_torn_tail_is_cut_and_appends_follow_it() {
    let dir = TempDir::new("torn");
    {
        let (mut q, _) = open(&dir);
        q.enqueue("q", msg("a", "1", None, 1), T0).unwrap();
        q.enqueue("q", msg("b", "2", None, 1), T0).unwrap();
    }
    let good = std::fs::metadata(dir.wal()).unwrap().len();
    let offs = record_offsets(&dir.wal());
    let mut bytes = std::fs::read(dir.wal()).unwrap();
    let last = bytes[offs[1] as usize..].to_vec();
    bytes.extend_from_slice(&last[..last.len() - 3]);
    std::fs::write(dir.wal(), &bytes).unwrap();
    {
        let (mut q, opened) = open(&dir);
        assert_eq!(opened.torn_tail, (last.len() - 3) as u64);
        assert!(opened.damage.is_empty() && opened.backup.is_none());
        assert_eq!(std::fs::metadata(dir.wal()).unwrap().len(), good);
        q.enqueue("q", msg("c", "3", None, 1), T0).unwrap();
    }
    let (mut q, _) = open(&dir);
    assert_eq!(ids(&q.lease("q", ONE, T0).unwrap()), ["a", "b", "c"]);
}

#[test]
fn mid_log_damage_refuses_to_open_and_salvage_keeps_the_rest() {
    let dir = TempDir::new("damage");
    {
        let (mut q, _) = open(&dir);
        for i in 0..6 {
            q.enqueue("q", msg(&format!("m{i}"), "\"abcdefgh\"", None, 1), T0)
                .unwrap();
        }
    }
    let offs = record_offsets(&dir.wal());
    flip(&dir.wal(), offs[2] + 30);
    let before = std::fs::read(dir.wal()).unwrap();
    let err = Queues::open(&dir.0, Options::default(), T0)
        .err()
        .expect("must refuse");
    let text = err.to_string();
    assert!(text.contains(&dir.wal().display().to_string()), "{text}");
    assert!(text.contains(&format!("byte offset {}", offs[2])), "{text}");
    assert!(text.contains("3 valid records follow"), "{text}");
    assert!(text.contains("on_corruption: salvage"), "{text}");
    assert_eq!(
        std::fs::read(dir.wal()).unwrap(),
        before,
        "refusing changes nothing"
    );

    let salvage = Options {
        on_corruption: OnCorruption::Salvage,
        ..Options::default()
    };
    {
        let (mut q, opened) = Queues::open(&dir.0, salvage, T0).unwrap();
        assert_eq!(opened.live, 5);
        assert_eq!(opened.damage.len(), 1);
        assert_eq!(opened.damage[0].keys, ["q/m2"]);
        let backup = opened.backup.expect("original saved");
        assert!(backup.contains("queue.wal.corrupt-"), "{backup}");
        assert_eq!(std::fs::read(&backup).unwrap(), before);
        assert_eq!(
            ids(&q.lease("q", ONE, T0).unwrap()),
            ["m0", "m1", "m3", "m4", "m5"]
        );
    }
    let (_, opened) = open(&dir);
    assert!(opened.damage.is_empty(), "the salvaged log is clean");
}

#[test]
fn compaction_keeps_order_attempts_and_dead_letters() {
    let dir = TempDir::new("compact");
    let opts = || Options {
        compact_min_bytes: 4096,
        ..Options::default()
    };
    let payload = format!("\"{}\"", "p".repeat(100));
    {
        let (mut q, _) = Queues::open(&dir.0, opts(), T0).unwrap();
        q.enqueue("q", msg("keep1", &payload, None, 1000), T0)
            .unwrap();
        q.enqueue("q", msg("dead", &payload, Some("g"), 1), T0)
            .unwrap();
        q.enqueue("q", msg("keep2", &payload, None, 1000), T0)
            .unwrap();
        let l = q.lease("q", ONE, T0).unwrap();
        q.nack("q", &l.deliveries[0].token, 0, "once", T0).unwrap();
        q.nack("q", &l.deliveries[1].token, 0, "gone", T0).unwrap();
        q.nack("q", &l.deliveries[2].token, 0, "once", T0).unwrap();
        for i in 0..200 {
            let id = format!("churn{i}");
            q.enqueue("q", msg(&id, &payload, None, 1), T0).unwrap();
            let l = q.lease("q", LeaseRequest { max: 3, ..ONE }, T0).unwrap();
            for d in l.deliveries {
                if d.message_id == id {
                    q.ack("q", &d.token).unwrap();
                } else {
                    q.nack("q", &d.token, 0, "once", T0).unwrap();
                }
            }
        }
        assert!(q.compactions > 0, "the log is mostly acked messages");
        assert!(q.log_bytes() < 8192, "{}", q.log_bytes());
    }
    let (mut q, opened) = Queues::open(&dir.0, opts(), T0).unwrap();
    assert_eq!((opened.live, opened.dead), (2, 1));
    let l = q.lease("q", ONE, T0).unwrap();
    assert_eq!(ids(&l), ["keep1", "keep2"]);
    assert!(l.deliveries[0].attempt > 2, "attempts survive compaction");
    assert_eq!(l.deliveries[0].payload, payload);
    let dead = q.dead_letters("q", 0, 10).unwrap();
    assert_eq!(
        (dead[0].message_id.as_str(), dead[0].error.as_str()),
        ("dead", "gone")
    );
    assert_eq!(dead[0].group.as_deref(), Some("g"));
    assert_eq!(
        std::fs::read_dir(&dir.0).unwrap().count(),
        1,
        "no side files left"
    );
}

#[test]
fn a_message_damaged_after_open_is_dead_lettered_not_the_queue_stuck() {
    let dir = TempDir::new("bitrot");
    let (mut q, _) = open(&dir);
    q.enqueue("q", msg("a", "\"aaaaaaaa\"", None, 3), T0)
        .unwrap();
    q.enqueue("q", msg("b", "\"bbbbbbbb\"", None, 3), T0)
        .unwrap();
    let offs = record_offsets(&dir.wal());
    flip(&dir.wal(), offs[0] + 40);
    let l = q.lease("q", ONE, T0).unwrap();
    assert_eq!(ids(&l), ["b"]);
    let dead = q.dead_letters("q", 0, 10).unwrap();
    assert_eq!(dead[0].message_id, "a");
    assert_eq!(dead[0].payload, "null");
    assert!(dead[0].error.contains("checksum"), "{}", dead[0].error);
}

#[test]
fn a_lease_stops_at_max_lease_bytes_but_returns_one_message() {
    let dir = TempDir::new("leasebytes");
    let opts = Options {
        max_lease_bytes: 150,
        ..Options::default()
    };
    let (mut q, _) = Queues::open(&dir.0, opts, T0).unwrap();
    let payload = format!("\"{}\"", "z".repeat(200));
    for id in ["a", "b"] {
        q.enqueue("q", msg(id, &payload, None, 1), T0).unwrap();
    }
    assert_eq!(ids(&q.lease("q", ONE, T0).unwrap()), ["a"]);
    assert_eq!(ids(&q.lease("q", ONE, T0).unwrap()), ["b"]);
}
