//! The first message of a client connection, which has no tag: a length, a request code or
//! protocol version, and for a StartupMessage a list of NUL-terminated key/value pairs.

use super::{read_cstr, ProtocolError};

/// Postgres refuses startup packets longer than this; so does sluice.
pub const MAX_STARTUP_LEN: u32 = 10_000;
/// Request code of SSLRequest.
pub const SSL_REQUEST: u32 = 80_877_103;
/// Request code of GSSENCRequest.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// Request code of CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Protocol 3.0.
pub const PROTOCOL_3_0: u32 = 196_608;

/// One decoded startup-phase request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    /// The client asks for TLS.
    Ssl,
    /// The client asks for GSSAPI encryption.
    GssEnc,
    /// The client asks to cancel the query running on another connection.
    Cancel {
        /// Process id from BackendKeyData.
        pid: u32,
        /// Secret key from BackendKeyData.
        secret: u32,
    },
    /// A StartupMessage.
    Startup(StartupParams),
}

/// The parameters of a StartupMessage, in the order the client sent them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    /// Minor protocol version requested (major is always 3).
    pub minor_version: u16,
    /// Key/value pairs other than `user` and `database`.
    pub params: Vec<(String, String)>,
    /// The `user` parameter.
    pub user: String,
    /// The `database` parameter, defaulting to the user name.
    pub database: String,
}

impl StartupParams {
    /// Looks a parameter up by name.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Decodes one startup-phase request from the front of `buf`, returning it and the bytes used,
/// or `None` while incomplete.
///
/// # Errors
/// A length outside 8..=[`MAX_STARTUP_LEN`], an unknown request code or protocol version, or a
/// malformed parameter list. Garbage such as an HTTP request lands here as a bad length.
pub fn decode(buf: &[u8]) -> Result<Option<(StartupRequest, usize)>, ProtocolError> {
    let Some(head) = buf.get(..8) else {
        if buf.len() >= 4 {
            check_len(u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]))?;
        }
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    check_len(len)?;
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let len = len as usize;
    let Some(body) = buf.get(8..len) else { return Ok(None) };
    let req = match code {
        SSL_REQUEST | GSSENC_REQUEST if len != 8 => return Err(ProtocolError::Malformed { what: "encryption request" }),
        SSL_REQUEST => StartupRequest::Ssl,
        GSSENC_REQUEST => StartupRequest::GssEnc,
        CANCEL_REQUEST => {
            if len != 16 {
                return Err(ProtocolError::Malformed { what: "CancelRequest" });
            }
            StartupRequest::Cancel {
                pid: u32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                secret: u32::from_be_bytes([body[4], body[5], body[6], body[7]]),
            }
        }
        v if v >> 16 == 3 => StartupRequest::Startup(parse_params(body, (v & 0xffff) as u16)?),
        v => {
            return Err(ProtocolError::UnsupportedProtocol { major: (v >> 16) as u16, minor: (v & 0xffff) as u16 })
        }
    };
    Ok(Some((req, len)))
}

fn check_len(len: u32) -> Result<(), ProtocolError> {
    if len < 8 {
        return Err(ProtocolError::LengthTooShort(len));
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::TooLarge { len: len.into(), max: MAX_STARTUP_LEN.into() });
    }
    Ok(())
}

fn parse_params(body: &[u8], minor_version: u16) -> Result<StartupParams, ProtocolError> {
    const WHAT: &str = "StartupMessage";
    let mut out = StartupParams { minor_version, ..Default::default() };
    let mut pos = 0;
    loop {
        let key = read_cstr(body, &mut pos, WHAT)?;
        if key.is_empty() {
            break;
        }
        let value = read_cstr(body, &mut pos, WHAT)?;
        match key {
            "user" => out.user = value.to_owned(),
            "database" => out.database = value.to_owned(),
            _ => out.params.push((key.to_owned(), value.to_owned())),
        }
    }
    if pos != body.len() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    if out.user.is_empty() {
        return Err(ProtocolError::Malformed { what: "StartupMessage without a user" });
    }
    if out.database.is_empty() {
        out.database = out.user.clone();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, v) in pairs {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    #[test]
    fn startup_message_with_params_decodes() {
        let bytes = startup(&[("user", "app"), ("database", "db"), ("application_name", "x")]);
        let (req, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let StartupRequest::Startup(p) = req else { panic!() };
        assert_eq!((p.user.as_str(), p.database.as_str()), ("app", "db"));
        assert_eq!(p.get("application_name"), Some("x"));
    }

    #[test]
    fn database_defaults_to_user() {
        let (req, _) = decode(&startup(&[("user", "app")])).unwrap().unwrap();
        let StartupRequest::Startup(p) = req else { panic!() };
        assert_eq!(p.database, "app");
    }

    #[test]
    fn incomplete_packet_waits() {
        let bytes = startup(&[("user", "app")]);
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn ssl_and_cancel_requests_decode() {
        let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        assert_eq!(decode(&ssl).unwrap().unwrap().0, StartupRequest::Ssl);
        let mut cancel = vec![0, 0, 0, 16];
        cancel.extend(CANCEL_REQUEST.to_be_bytes());
        cancel.extend(7u32.to_be_bytes());
        cancel.extend(9u32.to_be_bytes());
        assert_eq!(decode(&cancel).unwrap().unwrap().0, StartupRequest::Cancel { pid: 7, secret: 9 });
    }

    #[test]
    fn http_garbage_is_rejected_by_length() {
        assert!(matches!(decode(b"GET / HTTP/1.1\r\n"), Err(ProtocolError::TooLarge { .. })));
    }

    #[test]
    fn short_length_and_unknown_version_are_rejected() {
        assert_eq!(decode(&[0, 0, 0, 4]).unwrap_err(), ProtocolError::LengthTooShort(4));
        let v2 = [0, 0, 0, 8, 0, 2, 0, 0];
        assert!(matches!(decode(&v2), Err(ProtocolError::UnsupportedProtocol { major: 2, .. })));
    }

    #[test]
    fn missing_user_and_unterminated_params_are_malformed() {
        assert!(decode(&startup(&[("database", "x")])).is_err());
        let mut bytes = startup(&[("user", "app")]);
        let n = bytes.len();
        bytes[n - 1] = b'z';
        assert!(decode(&bytes).is_err());
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A parameter name or value: any text without NUL.
    fn text() -> impl Strategy<Value = String> {
        "[^\\x00]{0,20}"
    }

    fn params() -> impl Strategy<Value = StartupParams> {
        let key = "[^\\x00]{1,20}".prop_filter("user and database are fields", |k| k != "user" && k != "database");
        ("[^\\x00]{1,20}", proptest::option::of("[^\\x00]{1,20}"), vec((key, text()), 0..8), any::<u16>())
            .prop_map(|(user, database, params, minor_version)| StartupParams {
                database: database.unwrap_or_else(|| user.clone()),
                user,
                params,
                minor_version,
            })
    }

    fn encode(p: &StartupParams) -> Vec<u8> {
        let mut body = (PROTOCOL_3_0 | u32::from(p.minor_version)).to_be_bytes().to_vec();
        let pairs = [("user", p.user.as_str()), ("database", p.database.as_str())];
        for (k, v) in pairs.into_iter().chain(p.params.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        out.extend(body);
        out
    }

    /// What every answer of `decode` must respect, whatever the input.
    fn check_bounds(data: &[u8]) -> Result<(), TestCaseError> {
        match decode(data) {
            Ok(Some((_, used))) => prop_assert!((8..=MAX_STARTUP_LEN as usize).contains(&used) && used <= data.len()),
            // Waiting for more is only allowed while less than a whole packet of the most a
            // client may send is buffered: a peer cannot make sluice buffer without bound.
            Ok(None) => prop_assert!(data.len() < MAX_STARTUP_LEN as usize),
            Err(_) => {}
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in vec(any::<u8>(), 0..64)) {
            check_bounds(&data)?;
        }

        #[test]
        fn arbitrary_bytes_after_a_plausible_header_never_panic_or_wait_beyond_the_limit(
            len in 0u32..=MAX_STARTUP_LEN + 2, code in prop_oneof![Just(PROTOCOL_3_0), Just(SSL_REQUEST), Just(CANCEL_REQUEST), any::<u32>()],
            tail in vec(any::<u8>(), 0..300),
        ) {
            let mut data = len.to_be_bytes().to_vec();
            data.extend(code.to_be_bytes());
            data.extend(tail);
            check_bounds(&data)?;
        }

        #[test]
        fn a_length_above_the_limit_is_refused_from_its_first_four_bytes(len in MAX_STARTUP_LEN + 1.., rest in vec(any::<u8>(), 0..16)) {
            let mut data = len.to_be_bytes().to_vec();
            data.extend(rest);
            prop_assert!(matches!(decode(&data), Err(ProtocolError::TooLarge { .. })), "{:?}", decode(&data));
        }

        #[test]
        fn a_length_below_eight_is_refused(len in 0u32..8, rest in vec(any::<u8>(), 0..16)) {
            let mut data = len.to_be_bytes().to_vec();
            data.extend(rest);
            prop_assert_eq!(decode(&data), Err(ProtocolError::LengthTooShort(len)));
        }

        #[test]
        fn startup_messages_round_trip(p in params(), trailing in vec(any::<u8>(), 0..8)) {
            let mut bytes = encode(&p);
            let len = bytes.len();
            bytes.extend(trailing);
            let (req, used) = decode(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, len);
            prop_assert_eq!(req, StartupRequest::Startup(p));
        }

        #[test]
        fn every_truncation_waits_and_every_shortened_length_is_refused(p in params(), cut in any::<proptest::sample::Index>()) {
            let bytes = encode(&p);
            let cut = cut.index(bytes.len());
            prop_assert_eq!(decode(&bytes[..cut]), Ok(None));
            // The same bytes, with a length field that says they are all there is.
            if cut >= 8 {
                let mut short = bytes[..cut].to_vec();
                short[..4].copy_from_slice(&(cut as u32).to_be_bytes());
                check_bounds(&short)?;
                prop_assert!(decode(&short).is_err(), "a truncated parameter list is malformed");
            }
        }

        #[test]
        fn a_longer_declared_length_waits_then_is_refused(p in params(), extra in 1usize..64, filler in any::<u8>()) {
            let mut bytes = encode(&p);
            let len = bytes.len() + extra;
            bytes[..4].copy_from_slice(&(len as u32).to_be_bytes());
            prop_assert_eq!(decode(&bytes), Ok(None));
            bytes.resize(len, filler);
            // Bytes after the terminating NUL of the list do not belong to a StartupMessage.
            prop_assert!(decode(&bytes).is_err());
        }

        #[test]
        fn mutated_startup_messages_never_panic(p in params(), at in any::<proptest::sample::Index>(), byte in any::<u8>(), op in 0u8..3) {
            let mut bytes = encode(&p);
            let at = at.index(bytes.len());
            match op {
                0 => bytes[at] = byte,
                1 => { bytes.remove(at); }
                _ => bytes.insert(at, byte),
            }
            check_bounds(&bytes)?;
        }

        #[test]
        fn invalid_utf8_or_a_missing_terminator_is_malformed(p in params(), at in any::<proptest::sample::Index>()) {
            let bytes = encode(&p);
            // Any byte of the parameter list (after the 8-byte header, before the final NUL).
            let at = 8 + at.index(bytes.len() - 9);
            let mut bad = bytes.clone();
            bad[at] = 0xff;
            prop_assert!(matches!(decode(&bad), Err(ProtocolError::Malformed { .. })), "{:?}", decode(&bad));
            let mut unterminated = bytes;
            let last = unterminated.len() - 1;
            unterminated[last] = b'x';
            prop_assert!(matches!(decode(&unterminated), Err(ProtocolError::Malformed { .. })), "{:?}", decode(&unterminated));
        }
    }
}
