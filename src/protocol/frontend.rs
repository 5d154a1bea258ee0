//! Messages from the client side of the protocol that sluice reads during login: the
//! PasswordMessage and the SASL initial and continuing responses, all tagged 'p'.

use super::{read_cstr, ProtocolError};

/// A SASLInitialResponse body: mechanism and initial client data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitial<'a> {
    /// The mechanism chosen, e.g. "SCRAM-SHA-256".
    pub mechanism: &'a str,
    /// client-first-message.
    pub data: &'a [u8],
}

/// Reads a cleartext or MD5 PasswordMessage body.
///
/// # Errors
/// A body that is not one NUL-terminated string.
pub fn parse_password(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut pos = 0;
    let s = read_cstr(body, &mut pos, "PasswordMessage")?;
    if pos != body.len() {
        return Err(ProtocolError::Malformed { what: "PasswordMessage" });
    }
    Ok(s)
}

/// Reads a SASLInitialResponse body.
///
/// # Errors
/// A body without a mechanism, or whose data length disagrees with the body.
pub fn parse_sasl_initial(body: &[u8]) -> Result<SaslInitial<'_>, ProtocolError> {
    const WHAT: &str = "SASLInitialResponse";
    let mut pos = 0;
    let mechanism = read_cstr(body, &mut pos, WHAT)?;
    let len_bytes = body.get(pos..pos + 4).ok_or(ProtocolError::Malformed { what: WHAT })?;
    let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    pos += 4;
    let data = if len == -1 {
        &[][..]
    } else {
        let len = usize::try_from(len).map_err(|_| ProtocolError::Malformed { what: WHAT })?;
        body.get(pos..pos + len).ok_or(ProtocolError::Malformed { what: WHAT })?
    };
    Ok(SaslInitial { mechanism, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_must_be_one_terminated_string() {
        assert_eq!(parse_password(b"secret\0").unwrap(), "secret");
        assert!(parse_password(b"secret").is_err());
        assert!(parse_password(b"a\0b\0").is_err());
    }

    #[test]
    fn sasl_initial_response_checks_its_length() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend(3i32.to_be_bytes());
        body.extend(b"abc");
        let s = parse_sasl_initial(&body).unwrap();
        assert_eq!((s.mechanism, s.data), ("SCRAM-SHA-256", &b"abc"[..]));
        let mut bad = b"SCRAM-SHA-256\0".to_vec();
        bad.extend(100i32.to_be_bytes());
        assert!(parse_sasl_initial(&bad).is_err());
        assert!(parse_sasl_initial(b"x").is_err());
    }
}
