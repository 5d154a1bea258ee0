//! Messages from the client side of the protocol that sluice reads during login: the
//! PasswordMessage and the SASL initial and continuing responses, all tagged 'p'; and which
//! message types a logged-in client may send at all.

use super::{read_cstr, ProtocolError};

/// Whether `tag` is a message a client may send once logged in (Postgres ends the connection
/// on any other with "invalid frontend message type").
pub fn is_session_message(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'S' | b'F' | b'X' | b'd' | b'c' | b'f')
}

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
/// A body without a mechanism, or whose data length disagrees with the body (bytes after the
/// data included, as Postgres refuses them).
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
    if pos + data.len() != body.len() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
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
        let mut trailing = body.clone();
        trailing.push(b'!');
        assert!(parse_sasl_initial(&trailing).is_err(), "bytes after the data");
    }

    #[test]
    fn only_frontend_message_types_are_session_messages() {
        for tag in *b"QPBDECHSFXdcf" {
            assert!(is_session_message(tag), "{}", tag as char);
        }
        for tag in [b'p', b'K', b'Z', b'z', b'R', 0, 0xff] {
            assert!(!is_session_message(tag), "{}", tag as char);
        }
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    fn sasl_initial(mechanism: &str, data: Option<&[u8]>) -> Vec<u8> {
        let mut body = mechanism.as_bytes().to_vec();
        body.push(0);
        match data {
            Some(d) => {
                body.extend((d.len() as i32).to_be_bytes());
                body.extend_from_slice(d);
            }
            None => body.extend((-1i32).to_be_bytes()),
        }
        body
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data in vec(any::<u8>(), 0..128)) {
            let _ = parse_password(&data);
            if let Ok(s) = parse_sasl_initial(&data) {
                prop_assert!(s.mechanism.len() + 5 + s.data.len() == data.len());
            }
        }

        #[test]
        fn passwords_round_trip_and_a_missing_or_extra_nul_is_refused(pw in "[^\\x00]{0,40}") {
            let mut body = pw.as_bytes().to_vec();
            prop_assert!(parse_password(&body).is_err());
            body.push(0);
            prop_assert_eq!(parse_password(&body), Ok(pw.as_str()));
            body.push(0);
            prop_assert!(parse_password(&body).is_err());
        }

        #[test]
        fn invalid_utf8_in_a_password_is_refused(pw in vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..40)) {
            let mut body = pw.clone();
            body.push(0);
            prop_assert_eq!(parse_password(&body).is_ok(), std::str::from_utf8(&pw).is_ok());
        }

        #[test]
        fn sasl_initial_responses_round_trip(mech in "[^\\x00]{1,20}", data in proptest::option::of(vec(any::<u8>(), 0..200))) {
            let body = sasl_initial(&mech, data.as_deref());
            let s = parse_sasl_initial(&body).unwrap();
            prop_assert_eq!(s.mechanism, mech.as_str());
            prop_assert_eq!(s.data, data.as_deref().unwrap_or_default());
        }

        #[test]
        fn a_wrong_data_length_is_refused_whatever_it_says(mech in "[^\\x00]{1,20}", data in vec(any::<u8>(), 0..200), len in any::<i32>()) {
            prop_assume!(len != data.len() as i32 && !(len == -1 && data.is_empty()));
            let mut body = sasl_initial(&mech, Some(&data));
            let at = mech.len() + 1;
            body[at..at + 4].copy_from_slice(&len.to_be_bytes());
            prop_assert!(parse_sasl_initial(&body).is_err());
        }

        #[test]
        fn truncated_sasl_initial_responses_are_refused(mech in "[^\\x00]{1,20}", data in vec(any::<u8>(), 0..200), cut in any::<proptest::sample::Index>()) {
            let body = sasl_initial(&mech, Some(&data));
            let cut = cut.index(body.len());
            prop_assert!(parse_sasl_initial(&body[..cut]).is_err());
        }
    }
}
