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

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(0u8..=255, 0..64)) {
            let _ = decode(&data);
        }
    }
}
