//! The parsers of untrusted input allocate in proportion to the bytes they are given, never to
//! what a length field claims: each parser runs under an allocator that records the most memory
//! the calling thread held at once. (A test binary of its own: the allocator is process-wide.)

use proptest::collection::vec;
use proptest::prelude::*;
use sluice::auth::scram::{ScramSecret, ScramServer};
use sluice::auth::{userlist, Secret};
use sluice::protocol::frame::{peek_header, Flow, Inspect, Scanner, Want};
use sluice::protocol::{frontend, startup};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts bytes held per thread and the peak since the last [`peak_during`].
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        track(layout.size() as isize);
        System.alloc_zeroed(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks may coexist while the data moves.
        track(new_size as isize);
        let p = System.realloc(ptr, layout, new_size);
        track(-(layout.size() as isize));
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most bytes this thread held at once while `f` ran, beyond what it held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> usize {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = f();
    let peak = PEAK.with(Cell::get);
    drop(out);
    (peak - start).max(0) as usize
}

/// What any parser may hold for `input_len` bytes of input: a few copies plus fixed overhead.
fn bound(input_len: usize) -> usize {
    4 * input_len + 16 * 1024
}

/// Asks for every message body, as the session does for the messages it inspects.
struct WantsBodies;

impl Inspect for WantsBodies {
    fn wants(&self, _: u8, _: u32) -> Want {
        Want::Body
    }
    fn message(&mut self, _: u8, _: &[u8]) -> Flow {
        Flow::Continue
    }
}

/// Inputs that claim a lot: a length field anywhere from tiny to 2^32 - 1 followed by a few
/// arbitrary bytes.
fn claims() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), prop_oneof![Just(u32::MAX), Just(1u32 << 31), any::<u32>()], vec(any::<u8>(), 0..64)).prop_map(
        |(tag, len, rest)| {
            let mut v = vec![tag];
            v.extend(len.to_be_bytes());
            v.extend(rest);
            v
        },
    )
}

proptest! {
    #[test]
    fn the_startup_decoder_allocates_by_the_input_not_the_length_field(data in claims()) {
        for input in [&data[..], &data[1..]] {
            let held = peak_during(|| startup::decode(input));
            prop_assert!(held <= bound(input.len()), "{held} bytes for {} input bytes", input.len());
        }
    }

    #[test]
    fn the_frame_scanner_allocates_nothing_for_a_claimed_length(data in claims(), max in prop_oneof![Just(u32::MAX), Just(1u32 << 30), 4u32..1 << 20]) {
        let held = peak_during(|| {
            let _ = peek_header(&data, max);
            let _ = Scanner::new(max).scan(&data, &mut WantsBodies);
        });
        prop_assert_eq!(held, 0);
    }

    #[test]
    fn login_message_parsers_allocate_by_the_input(data in claims()) {
        let held = peak_during(|| {
            let _ = frontend::parse_password(&data);
            let _ = frontend::parse_sasl_initial(&data);
        });
        prop_assert_eq!(held, 0);
        let held = peak_during(|| {
            if let Ok((server, _)) = ScramServer::start("u", ScramSecret::decoy("u"), "SCRAM-SHA-256", &data, None) {
                let _ = server.finish(&data);
            }
            let _ = ScramServer::start("u", ScramSecret::decoy("u"), "SCRAM-SHA-256", b"n,,n=u,r=abc", None).map(|(s, _)| s.finish(&data));
        });
        prop_assert!(held <= bound(data.len()), "{held} bytes");
    }

    #[test]
    fn stored_secrets_and_userlists_allocate_by_the_input(text in "[\" \\nA-Za-z0-9$:+/=-]{0,300}") {
        let held = peak_during(|| userlist::parse(&text));
        prop_assert!(held <= bound(text.len()), "{held} bytes for {} bytes of userlist", text.len());
        let held = peak_during(|| ScramSecret::parse(&text));
        prop_assert!(held <= bound(text.len()), "{held} bytes for {} bytes of secret", text.len());
    }
}

#[test]
fn a_plain_secret_derives_its_keys_in_bounded_memory() {
    let password = "x".repeat(1000);
    let held = peak_during(|| Secret::parse(&password));
    assert!(held <= bound(password.len()), "{held} bytes");
}

#[test]
fn the_counter_sees_what_is_allocated() {
    let held = peak_during(|| Vec::<u8>::with_capacity(1 << 20));
    assert!(held >= 1 << 20, "{held}");
    assert_eq!(peak_during(|| 1 + 1), 0);
}
