//! Unit tests of statement rewriting and the owed-response queue.

use super::*;

fn parse_body(name: &str, query: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    b.extend_from_slice(query.as_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b
}

fn bind_body(stmt: &str) -> Vec<u8> {
    let mut b = vec![0];
    b.extend_from_slice(stmt.as_bytes());
    b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
    b
}

struct Fixture {
    registry: StatementRegistry,
    client: ClientStatements,
    server: ServerStatements,
    queue: ResponseQueue,
    may_have_failed: bool,
}

impl Fixture {
    fn new(cap: usize) -> Self {
        Self {
            registry: StatementRegistry::default(),
            client: ClientStatements::default(),
            server: ServerStatements::new(cap),
            queue: ResponseQueue::default(),
            may_have_failed: false,
        }
    }

    fn send(&mut self, tag: u8, body: &[u8]) -> (Rewrite, BytesMut) {
        let mut out = BytesMut::new();
        let mut st = Statements {
            client: &mut self.client,
            server: &mut self.server,
            queue: &mut self.queue,
            registry: &self.registry,
            may_have_failed: self.may_have_failed,
        };
        let r = st.client_message(tag, body, &mut out).unwrap();
        (r, out)
    }

    fn reply(&mut self, tag: u8) -> ServerAction {
        self.queue.on_server_message(tag, &mut self.server)
    }
}

fn tags(out: &[u8]) -> Vec<u8> {
    let mut v = vec![];
    let mut pos = 0;
    while pos + 5 <= out.len() {
        v.push(out[pos]);
        pos += 1 + u32::from_be_bytes([out[pos + 1], out[pos + 2], out[pos + 3], out[pos + 4]]) as usize;
    }
    v
}

#[test]
fn a_named_parse_goes_out_under_the_pooler_wide_name() {
    let mut f = Fixture::new(10);
    let (r, out) = f.send(b'P', &parse_body("s1", "select 1"));
    assert_eq!(r, Rewrite::Replaced);
    assert!(out.windows(8).any(|w| w == b"sluice_0"), "{out:?}");
    f.send(b'S', &[]);
    assert_eq!(f.reply(b'1'), ServerAction::Forward);
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
    assert!(f.server.touch("sluice_0"));
}

#[test]
fn the_same_text_from_another_client_on_a_prepared_server_is_answered_by_sluice() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("a", "select 1"));
    f.reply(b'1');
    f.client = ClientStatements::default();
    let (r, out) = f.send(b'P', &parse_body("other_name", "select 1"));
    assert_eq!(r, Rewrite::Replaced);
    assert!(out.is_empty(), "nothing is sent to the server");
    assert!(f.queue.synthetic_due());
    let mut to_client = BytesMut::new();
    f.queue.take_synthetic(&mut to_client);
    assert_eq!(&to_client[..], &[b'1', 0, 0, 0, 4]);
}

#[test]
fn a_bind_on_a_server_without_the_statement_injects_a_parse_whose_reply_is_swallowed() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("s1", "select 1"));
    f.reply(b'1');
    f.server.clear(); // the client lands on another server connection
    let (r, out) = f.send(b'B', &bind_body("s1"));
    assert_eq!(r, Rewrite::Replaced);
    assert_eq!(tags(&out), b"PB");
    f.send(b'E', &[0, 0, 0, 0, 0]);
    f.send(b'S', &[]);
    assert!(f.queue.swallows(b'1'));
    assert_eq!(f.reply(b'1'), ServerAction::Swallow);
    for t in [b'2', b'D', b'C', b'Z'] {
        assert_eq!(f.reply(t), ServerAction::Forward);
    }
    assert!(f.queue.is_empty());
}

#[test]
fn unnamed_statements_pass_untouched() {
    let mut f = Fixture::new(10);
    assert_eq!(f.send(b'P', &parse_body("", "select 1")).0, Rewrite::AsIs);
    assert_eq!(f.send(b'B', &bind_body("")).0, Rewrite::AsIs);
    assert_eq!(f.send(b'D', b"P\0").0, Rewrite::AsIs);
    assert_eq!(f.send(b'E', &[0, 0, 0, 0, 0]).0, Rewrite::AsIs);
}

#[test]
fn close_of_a_named_statement_is_answered_by_sluice_and_forgets_the_name() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("s1", "select 1"));
    f.reply(b'1');
    let (r, out) = f.send(b'C', b"Ss1\0");
    assert_eq!(r, Rewrite::Replaced);
    assert!(out.is_empty());
    assert!(f.queue.synthetic_due());
    assert!(f.client.is_empty());
    // A later Bind of the closed name fails on the server, as it would on Postgres.
    let (_, out) = f.send(b'B', &bind_body("s1"));
    assert!(out.windows(14).any(|w| w == b"sluice_unknown"));
}

#[test]
fn after_an_error_the_made_up_replies_up_to_sync_are_dropped() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("a", "select 1"));
    f.reply(b'1');
    // Bind fails; the following Parse of a prepared text would have been answered by sluice.
    f.send(b'B', &bind_body("a"));
    f.send(b'P', &parse_body("b", "select 1"));
    f.send(b'S', &[]);
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    assert!(!f.queue.synthetic_due(), "Postgres skips to Sync, and so does sluice");
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
}

#[test]
fn a_failed_parse_is_not_recorded_as_prepared() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("bad", "selec 1"));
    f.send(b'S', &[]);
    f.reply(b'E');
    f.reply(b'Z');
    assert!(f.server.is_empty());
}

#[test]
fn the_least_recently_used_statement_is_closed_when_the_server_is_full() {
    let mut f = Fixture::new(2);
    for (name, q) in [("a", "select 1"), ("b", "select 2")] {
        f.send(b'P', &parse_body(name, q));
        f.reply(b'1');
    }
    f.send(b'B', &bind_body("a")); // a is now more recent than b
    f.reply(b'2');
    let (_, out) = f.send(b'P', &parse_body("c", "select 3"));
    assert_eq!(tags(&out), b"CP");
    assert!(out.windows(8).any(|w| w == b"sluice_1"), "b is evicted");
    assert_eq!(f.reply(b'3'), ServerAction::Swallow);
    assert_eq!(f.reply(b'1'), ServerAction::Forward);
    assert_eq!(f.server.len(), 2);
}

#[test]
fn an_error_inside_a_simple_query_does_not_skip_later_entries() {
    let mut f = Fixture::new(2);
    f.send(b'Q', &[]);
    f.send(b'Q', &[]);
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    f.reply(b'Z');
    f.reply(b'Z');
    assert!(f.queue.is_empty());
}

#[test]
fn malformed_bodies_are_errors_not_panics() {
    let mut f = Fixture::new(2);
    let mut out = BytesMut::new();
    let mut st = Statements {
        client: &mut f.client,
        server: &mut f.server,
        queue: &mut f.queue,
        registry: &f.registry,
        may_have_failed: false,
    };
    for (tag, body) in [(b'P', &b"no-nul"[..]), (b'B', b"\0"), (b'D', b""), (b'C', b"S")] {
        assert!(st.client_message(tag, body, &mut out).is_err());
    }
}

#[test]
fn messages_sent_after_an_error_but_before_their_sync_are_owed_nothing() {
    let mut f = Fixture::new(10);
    // A pipeline: the error comes back before the client has sent the rest of it.
    f.send(b'P', &parse_body("a", "select 1/0"));
    f.send(b'B', &bind_body("a"));
    f.send(b'E', &[]);
    f.reply(b'1');
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    assert!(f.queue.skipping_until_sync());
    let (r, out) = f.send(b'P', &parse_body("b", "select 2"));
    assert_eq!(r, Rewrite::AsIs, "the server skips it; nothing to prepare");
    assert!(out.is_empty());
    f.send(b'B', &bind_body("b"));
    f.send(b'E', &[]);
    f.send(b'S', &[]);
    assert!(!f.queue.skipping_until_sync());
    f.reply(b'Z');
    assert!(f.queue.is_empty(), "only the Sync was owed");
    assert_eq!(f.server.len(), 1, "a was prepared; b never reached the server");
}

#[test]
fn a_copy_start_forgets_only_the_syncs_the_server_ignored() {
    let mut f = Fixture::new(10);
    f.send(b'E', &[]);
    f.send(b'S', &[]); // sent before CopyInResponse: ignored
    f.queue.copy_started(1);
    f.send(b'S', &[]); // after CopyDone: answered
    f.reply(b'C');
    f.reply(b'Z');
    assert!(f.queue.is_empty());
}

#[test]
fn the_completions_of_statements_sluice_added_to_a_query_are_swallowed() {
    let mut f = Fixture::new(10);
    f.queue.rewritten_query(&[false, true, true, false]);
    assert!(!f.queue.swallows(b'C'));
    assert_eq!(f.reply(b'C'), ServerAction::Forward);
    assert!(f.queue.swallows(b'C'));
    assert_eq!(f.reply(b'C'), ServerAction::Swallow);
    assert_eq!(f.reply(b'C'), ServerAction::Swallow);
    assert_eq!(f.reply(b'S'), ServerAction::Forward, "ParameterStatus passes");
    assert_eq!(f.reply(b'C'), ServerAction::Forward);
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
    // An error ends the query: nothing more is swallowed, the ReadyForQuery ends the entry.
    f.queue.rewritten_query(&[false, true]);
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
}

#[test]
fn a_parse_in_a_transaction_that_may_have_failed_is_left_to_the_server() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("a", "select 1"));
    f.reply(b'1');
    f.may_have_failed = true;
    let (r, out) = f.send(b'P', &parse_body("b", "select 1"));
    assert_eq!(r, Rewrite::Replaced);
    assert_eq!(tags(&out), b"PC", "parsed under a throwaway name, then closed");
    assert!(out.windows(12).any(|w| w == b"sluice_probe"));
    f.send(b'S', &[]);
    // Refused (25P02): the Close is skipped, the error and ReadyForQuery go to the client.
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
    assert!(f.server.touch("sluice_0"), "the shared statement stays prepared");
    // Accepted: its ParseComplete is the client's, the CloseComplete is sluice's.
    f.send(b'P', &parse_body("c", "select 1"));
    f.send(b'S', &[]);
    assert_eq!(f.reply(b'1'), ServerAction::Forward);
    assert_eq!(f.reply(b'3'), ServerAction::Swallow);
    assert_eq!(f.reply(b'Z'), ServerAction::Forward);
    assert!(f.queue.is_empty());
}

#[test]
fn a_use_of_a_statement_whose_injected_parse_is_unanswered_in_an_earlier_request_waits() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("s", "select 1"));
    f.reply(b'1');
    f.server.clear(); // another server connection
    let (_, out) = f.send(b'B', &bind_body("s"));
    assert_eq!(tags(&out), b"PB");
    let (r, out) = f.send(b'B', &bind_body("s"));
    assert_eq!((r, tags(&out)), (Rewrite::Replaced, b"B".to_vec()), "same request: an error skips both");
    f.send(b'S', &[]);
    assert_eq!(f.send(b'B', &bind_body("s")).0, Rewrite::Wait, "next request: the Parse may fail");
    assert_eq!(f.send(b'D', b"Ss\0").0, Rewrite::Wait);
    assert_eq!(f.send(b'P', &parse_body("t", "select 1")).0, Rewrite::Wait);
    // The Parse failed (say, 25P02): the statement is prepared again for the next request.
    assert_eq!(f.reply(b'E'), ServerAction::Forward);
    let (r, out) = f.send(b'B', &bind_body("s"));
    assert_eq!((r, tags(&out)), (Rewrite::Replaced, b"PB".to_vec()));
    f.send(b'S', &[]);
    f.reply(b'Z');
    assert_eq!(f.reply(b'1'), ServerAction::Swallow);
    assert_eq!(f.reply(b'2'), ServerAction::Forward);
    f.reply(b'Z');
    assert!(f.queue.is_empty());
    // Answered: no more waiting.
    assert_eq!(f.send(b'B', &bind_body("s")).0, Rewrite::Replaced);
}

#[test]
fn a_client_parse_of_a_text_whose_parse_is_unanswered_in_an_earlier_request_waits() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("a", "select 1"));
    f.send(b'S', &[]);
    assert_eq!(f.send(b'P', &parse_body("b", "select 1")).0, Rewrite::Wait);
    // A Bind of the client's own statement does not wait: if its Parse failed, so does the Bind.
    assert_eq!(f.send(b'B', &bind_body("a")).0, Rewrite::Replaced);
    f.reply(b'1');
    f.reply(b'Z');
    let (_, out) = f.send(b'P', &parse_body("b", "select 1"));
    assert!(out.is_empty(), "answered by sluice");
}

/// An ErrorResponse body with this SQLSTATE.
fn error_body(code: &str) -> Vec<u8> {
    let mut b = b"SERROR\0C".to_vec();
    b.extend_from_slice(code.as_bytes());
    b.extend_from_slice(b"\0Mcached plan must not change result type\0\0");
    b
}

#[test]
fn a_statement_whose_result_type_changed_is_closed_and_parsed_again_and_its_text_renamed() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("s", "select * from t"));
    f.reply(b'1');
    f.send(b'B', &bind_body("s"));
    f.send(b'E', &[]);
    f.send(b'S', &[]);
    assert!(f.queue.wants_error_fields());
    f.queue.error_fields(&error_body("0A000"), &mut f.server, Some(&f.registry));
    f.reply(b'E');
    f.reply(b'Z');
    assert!(f.queue.is_empty());
    // The client's statement is prepared again under its name, closed first.
    let (_, out) = f.send(b'B', &bind_body("s"));
    assert_eq!(tags(&out), b"CPB");
    assert!(out.windows(8).all(|w| w != b"sluice_1"));
    assert_eq!(f.reply(b'3'), ServerAction::Swallow);
    assert_eq!(f.reply(b'1'), ServerAction::Swallow);
    // A new Parse of the text gets a name no server connection has prepared.
    f.client = ClientStatements::default();
    let (_, out) = f.send(b'P', &parse_body("t", "select * from t"));
    assert_eq!(tags(&out), b"P");
    assert!(out.windows(8).any(|w| w == b"sluice_1"), "{out:?}");
}

#[test]
fn other_errors_at_a_bind_leave_the_statement_prepared() {
    let mut f = Fixture::new(10);
    f.send(b'P', &parse_body("s", "select 1/$1::int"));
    f.reply(b'1');
    f.send(b'B', &bind_body("s"));
    f.send(b'S', &[]);
    f.queue.error_fields(&error_body("22P02"), &mut f.server, Some(&f.registry));
    f.reply(b'E');
    f.reply(b'Z');
    assert!(f.server.touch("sluice_0"));
    assert_eq!(f.registry.len(), 1);
    let (_, out) = f.send(b'B', &bind_body("s"));
    assert_eq!(tags(&out), b"B");
}
