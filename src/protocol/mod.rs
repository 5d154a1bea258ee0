//! The Postgres wire protocol, sans IO.
//!
//! - [`frame`]: the 5-byte message header and a streaming [`frame::Scanner`] that walks messages
//!   in a buffer in place, so the relay can forward bytes without copying or re-encoding them;
//! - [`startup`]: the untagged first message of a client connection (StartupMessage, SSLRequest,
//!   GSSENCRequest, CancelRequest);
//! - [`backend`]: the messages sluice builds toward clients (ErrorResponse, Authentication*,
//!   ParameterStatus, BackendKeyData, ReadyForQuery) and reads from servers;
//! - [`frontend`]: the messages sluice reads from clients during login (PasswordMessage and the
//!   SASL responses).
//!
//! Tags repeat across directions ('D' is DataRow from a server and Describe from a client), so
//! the two directions are kept in separate modules.

pub mod backend;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use backend::SqlState;

/// Errors from decoding protocol bytes. All of them mean the peer spoke something that is not
/// the Postgres protocol; the connection is closed after telling the client why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field below the minimum of 4 (or 8 for a startup packet).
    #[error("invalid message length {0}")]
    LengthTooShort(u32),
    /// A length above the configured maximum.
    #[error("message length {len} exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The maximum.
        max: u64,
    },
    /// A startup packet with a version or request code sluice does not speak.
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol {
        /// Major version (or the high half of a request code).
        major: u16,
        /// Minor version.
        minor: u16,
    },
    /// A message whose body does not have the shape its tag requires.
    #[error("malformed {what} message")]
    Malformed {
        /// What was being read.
        what: &'static str,
    },
    /// A message that is not allowed at this point.
    #[error("unexpected message type {:?}", char::from(*.0))]
    Unexpected(u8),
}

impl ProtocolError {
    /// The SQLSTATE a client is told.
    pub fn sqlstate(&self) -> SqlState {
        match self {
            ProtocolError::UnsupportedProtocol { .. } => SqlState::FEATURE_NOT_SUPPORTED,
            ProtocolError::TooLarge { .. } => SqlState::PROGRAM_LIMIT_EXCEEDED,
            _ => SqlState::PROTOCOL_VIOLATION,
        }
    }
}

/// Reads a NUL-terminated string starting at `buf[*pos]`, advancing `pos` past the NUL.
pub(crate) fn read_cstr<'a>(buf: &'a [u8], pos: &mut usize, what: &'static str) -> Result<&'a str, ProtocolError> {
    let rest = buf.get(*pos..).ok_or(ProtocolError::Malformed { what })?;
    let end = rest.iter().position(|&b| b == 0).ok_or(ProtocolError::Malformed { what })?;
    let s = std::str::from_utf8(&rest[..end]).map_err(|_| ProtocolError::Malformed { what })?;
    *pos += end + 1;
    Ok(s)
}
