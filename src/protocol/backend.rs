//! Messages from the server side of the protocol: the ones sluice builds for its clients, and
//! small readers for the few server messages the relay inspects.

use bytes::{BufMut, BytesMut};

/// A five-character SQLSTATE code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlState(pub [u8; 5]);

#[allow(missing_docs)]
impl SqlState {
    pub const PROTOCOL_VIOLATION: SqlState = SqlState(*b"08P01");
    pub const CONNECTION_FAILURE: SqlState = SqlState(*b"08006");
    pub const CANNOT_CONNECT_NOW: SqlState = SqlState(*b"57P03");
    pub const ADMIN_SHUTDOWN: SqlState = SqlState(*b"57P01");
    pub const QUERY_CANCELED: SqlState = SqlState(*b"57014");
    pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState(*b"0A000");
    pub const PROGRAM_LIMIT_EXCEEDED: SqlState = SqlState(*b"54000");
    pub const INVALID_PASSWORD: SqlState = SqlState(*b"28P01");
    pub const INVALID_AUTHORIZATION: SqlState = SqlState(*b"28000");
    pub const INVALID_CATALOG_NAME: SqlState = SqlState(*b"3D000");
    pub const TOO_MANY_CONNECTIONS: SqlState = SqlState(*b"53300");
    pub const IDLE_IN_TRANSACTION_TIMEOUT: SqlState = SqlState(*b"25P03");
    pub const INTERNAL_ERROR: SqlState = SqlState(*b"XX000");
    pub const CONFIGURATION_LIMIT_EXCEEDED: SqlState = SqlState(*b"53400");

    /// Reads a code a server sent; `None` unless it is five ASCII letters or digits.
    pub fn from_code(code: &str) -> Option<SqlState> {
        let b: [u8; 5] = code.as_bytes().try_into().ok()?;
        b.iter().all(u8::is_ascii_alphanumeric).then_some(SqlState(b))
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Constructed only from ASCII alphanumerics.
        std::str::from_utf8(&self.0).unwrap_or("XX000")
    }
}

/// Severity of an ErrorResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// Transaction status byte of ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    /// 'I': not in a transaction block.
    Idle,
    /// 'T': in a transaction block.
    InTransaction,
    /// 'E': in a failed transaction block.
    Failed,
}

impl TransactionStatus {
    /// Reads the status byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }

    /// The status byte.
    pub fn as_byte(self) -> u8 {
        match self {
            Self::Idle => b'I',
            Self::InTransaction => b'T',
            Self::Failed => b'E',
        }
    }
}

pub(crate) fn put_message(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    let len = (buf.len() - at) as u32;
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(crate) fn put_cstr(buf: &mut BytesMut, s: &str) {
    // A NUL inside would end the field early; replace it so the message stays well formed.
    for b in s.bytes() {
        buf.put_u8(if b == 0 { b'?' } else { b });
    }
    buf.put_u8(0);
}

/// ErrorResponse ('E').
pub fn error_response(buf: &mut BytesMut, severity: Severity, code: SqlState, message: &str) {
    put_message(buf, b'E', |b| {
        b.put_u8(b'S');
        put_cstr(b, severity.as_str());
        b.put_u8(b'V');
        put_cstr(b, severity.as_str());
        b.put_u8(b'C');
        put_cstr(b, code.as_str());
        b.put_u8(b'M');
        put_cstr(b, message);
        b.put_u8(0);
    });
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| b.put_u32(0));
}

/// AuthenticationCleartextPassword.
pub fn auth_cleartext(buf: &mut BytesMut) {
    put_message(buf, b'R', |b| b.put_u32(3));
}

/// AuthenticationMD5Password with its salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    put_message(buf, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL offering SCRAM-SHA-256, and first SCRAM-SHA-256-PLUS when `with_plus`
/// (a TLS connection whose certificate has channel binding data).
pub fn auth_sasl(buf: &mut BytesMut, with_plus: bool) {
    put_message(buf, b'R', |b| {
        b.put_u32(10);
        if with_plus {
            put_cstr(b, "SCRAM-SHA-256-PLUS");
        }
        put_cstr(b, "SCRAM-SHA-256");
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    put_message(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, key: &str, value: &str) {
    put_message(buf, b'S', |b| {
        put_cstr(b, key);
        put_cstr(b, value);
    });
}

/// BackendKeyData.
pub fn backend_key_data(buf: &mut BytesMut, pid: u32, secret: u32) {
    put_message(buf, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(secret);
    });
}

/// ReadyForQuery.
pub fn ready_for_query(buf: &mut BytesMut, status: TransactionStatus) {
    put_message(buf, b'Z', |b| b.put_u8(status.as_byte()));
}

/// NegotiateProtocolVersion: sluice speaks 3.0 and none of the `_pq_.` options.
pub fn negotiate_protocol_version(buf: &mut BytesMut, unsupported: &[&str]) {
    put_message(buf, b'v', |b| {
        b.put_u32(0);
        b.put_u32(unsupported.len() as u32);
        for o in unsupported {
            put_cstr(b, o);
        }
    });
}

/// Reads a ParameterStatus body into (name, value).
pub fn parse_parameter_status(body: &[u8]) -> Option<(&str, &str)> {
    let mut pos = 0;
    let k = super::read_cstr(body, &mut pos, "ParameterStatus").ok()?;
    let v = super::read_cstr(body, &mut pos, "ParameterStatus").ok()?;
    Some((k, v))
}

/// Whether an ErrorResponse body says FATAL or PANIC (the server ends the connection).
pub fn is_fatal(body: &[u8]) -> bool {
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let field = body[pos];
        let Some(len) = body[pos + 1..].iter().position(|&b| b == 0) else { return false };
        let value = &body[pos + 1..pos + 1 + len];
        if matches!(field, b'V' | b'S') && (value == b"FATAL" || value == b"PANIC") {
            return true;
        }
        pos += len + 2;
    }
    false
}

/// The first column of a DataRow body, as text; `None` for NULL, no column or a malformed body.
pub fn first_column(body: &[u8]) -> Option<String> {
    let columns = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    if columns == 0 {
        return None;
    }
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let value = body.get(6..6 + len)?;
    std::str::from_utf8(value).ok().map(str::to_owned)
}

/// Every column of a DataRow body as text (`None` for NULL); `None` for a malformed body.
pub fn data_row_columns(body: &[u8]) -> Option<Vec<Option<String>>> {
    let columns = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut pos = 2;
    let mut out = Vec::with_capacity(usize::from(columns).min(64));
    for _ in 0..columns {
        let len = i32::from_be_bytes(body.get(pos..pos + 4)?.try_into().ok()?);
        pos += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let value = body.get(pos..pos + len as usize)?;
        pos += len as usize;
        out.push(Some(std::str::from_utf8(value).ok()?.to_owned()));
    }
    Some(out)
}

/// Reads the fields of an ErrorResponse or NoticeResponse body: (severity, code, message).
pub fn parse_error_fields(body: &[u8]) -> (String, String, String) {
    let (mut sev, mut code, mut msg) = (String::new(), String::new(), String::new());
    let mut pos = 0;
    while pos < body.len() && body[pos] != 0 {
        let field = body[pos];
        pos += 1;
        let Ok(v) = super::read_cstr(body, &mut pos, "ErrorResponse") else { break };
        match field {
            b'V' => sev = v.to_owned(),
            b'S' if sev.is_empty() => sev = v.to_owned(),
            b'C' => code = v.to_owned(),
            b'M' => msg = v.to_owned(),
            _ => {}
        }
    }
    (sev, code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_column_reads_text_null_and_short_bodies() {
        let mut row = vec![0, 1, 0, 0, 0, 3];
        row.extend_from_slice(b"0/1");
        assert_eq!(first_column(&row).as_deref(), Some("0/1"));
        assert_eq!(first_column(&[0, 1, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(first_column(&[0, 1, 0, 0, 0, 9, b'x']), None);
        assert_eq!(first_column(&[0]), None);
    }

    #[test]
    fn error_response_round_trips_through_the_field_reader() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, Severity::Fatal, SqlState::PROTOCOL_VIOLATION, "bad\0thing");
        assert_eq!(buf[0], b'E');
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        assert_eq!(len + 1, buf.len());
        let (sev, code, msg) = parse_error_fields(&buf[5..]);
        assert_eq!((sev.as_str(), code.as_str(), msg.as_str()), ("FATAL", "08P01", "bad?thing"));
    }

    #[test]
    fn ready_for_query_carries_status() {
        let mut buf = BytesMut::new();
        ready_for_query(&mut buf, TransactionStatus::InTransaction);
        assert_eq!(&buf[..], &[b'Z', 0, 0, 0, 5, b'T']);
    }

    #[test]
    fn parameter_status_parses_back() {
        let mut buf = BytesMut::new();
        parameter_status(&mut buf, "TimeZone", "UTC");
        assert_eq!(parse_parameter_status(&buf[5..]), Some(("TimeZone", "UTC")));
        assert_eq!(parse_parameter_status(b"no-nul"), None);
    }

    proptest::proptest! {
        #[test]
        fn readers_of_server_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = parse_parameter_status(&body);
            let _ = is_fatal(&body);
            let _ = first_column(&body);
            let _ = parse_error_fields(&body);
        }

        #[test]
        fn error_responses_round_trip(code in "[0-9A-Z]{5}", message in "[^\\x00]{0,60}", fatal in proptest::prelude::any::<bool>()) {
            let mut buf = BytesMut::new();
            let severity = if fatal { Severity::Fatal } else { Severity::Error };
            error_response(&mut buf, severity, SqlState::from_code(&code).unwrap_or(SqlState::PROTOCOL_VIOLATION), &message);
            let (sev, _, msg) = parse_error_fields(&buf[5..]);
            proptest::prop_assert_eq!(sev, if fatal { "FATAL" } else { "ERROR" });
            proptest::prop_assert_eq!(msg, message);
            proptest::prop_assert_eq!(is_fatal(&buf[5..]), fatal);
        }
    }
}
