//! The server half of SCRAM-SHA-256 (RFC 5802/7677 as Postgres uses it): stored keys, the
//! server-first message, proof verification and the server signature.

use super::{constant_time_eq, AuthError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// SCRAM keys as Postgres stores them: `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramSecret {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(data);
    m.finalize().into_bytes().into()
}

fn key32(b: &[u8]) -> Option<[u8; 32]> {
    b.try_into().ok()
}

impl ScramSecret {
    /// Reads the stored form; `None` if the text is not one.
    pub fn parse(text: &str) -> Option<ScramSecret> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(ScramSecret {
            iterations: iter.parse().ok().filter(|&i| i > 0)?,
            salt: B64.decode(salt).ok()?,
            stored_key: key32(&B64.decode(stored).ok()?)?,
            server_key: key32(&B64.decode(server).ok()?)?,
        })
    }

    /// Derives keys from a plain password with a fresh salt (SASLprep applied as Postgres does).
    pub fn derive(password: &str) -> ScramSecret {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // scram_sha_256 always produces the stored form parse() reads.
        ScramSecret::parse(&text).unwrap_or_else(|| unreachable!("postgres-protocol produced {text}"))
    }

    /// A secret for a user that does not exist, so a failed login looks like any other: like a
    /// real user's, its salt is the same at every attempt (derived from the name with a key
    /// drawn once per process), so that asking twice does not tell the two apart.
    pub fn decoy(user: &str) -> ScramSecret {
        static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut k = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut k);
            k
        });
        let salt = hmac(key, user.as_bytes())[..16].to_vec();
        ScramSecret { iterations: 4096, salt, stored_key: [0; 32], server_key: [0; 32] }
    }

    fn salted_password(&self, password: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        let prepped = stringprep::saslprep(password).map(|c| c.into_owned()).unwrap_or_else(|_| password.to_owned());
        pbkdf2::pbkdf2_hmac::<Sha256>(prepped.as_bytes(), &self.salt, self.iterations, &mut out);
        out
    }

    /// Whether a cleartext password matches these keys.
    pub fn verify_password(&self, password: &str) -> bool {
        let client_key = hmac(&self.salted_password(password), b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        constant_time_eq(&stored, &self.stored_key)
    }
}

/// One SCRAM exchange, server side.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    user: String,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Reads the client-first-message and produces the server-first-message.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] for a message that is not a client-first-message, or that asks
    /// for channel binding (not offered without TLS).
    pub fn start(user: &str, secret: ScramSecret, client_first: &[u8]) -> Result<(ScramServer, String), AuthError> {
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (cbind, rest) = text.split_once(',').ok_or(AuthError::Malformed("no GS2 header"))?;
        let (authzid, bare) = rest.split_once(',').ok_or(AuthError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            _ => return Err(AuthError::Malformed("channel binding is not supported on this connection")),
        }
        if !authzid.is_empty() {
            return Err(AuthError::Malformed("authorization identity is not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(AuthError::Malformed("no client nonce"))?;
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = format!("{client_nonce}{}", B64.encode(raw));
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&secret.salt), secret.iterations);
        let gs2_header = format!("{cbind},{authzid},");
        Ok((
            ScramServer {
                secret,
                user: user.to_owned(),
                gs2_header,
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                nonce,
            },
            server_first,
        ))
    }

    /// Verifies the client-final-message and produces the server-final-message.
    ///
    /// # Errors
    /// [`AuthError::Failed`] when the proof does not match; [`AuthError::Malformed`] otherwise.
    pub fn finish(self, client_final: &[u8]) -> Result<String, AuthError> {
        let text = std::str::from_utf8(client_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(AuthError::Malformed("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(c) = attr.strip_prefix("c=") {
                channel = Some(c);
            } else if let Some(r) = attr.strip_prefix("r=") {
                nonce = Some(r);
            }
        }
        let channel = channel.ok_or(AuthError::Malformed("no channel binding attribute"))?;
        if channel != B64.encode(self.gs2_header.as_bytes()) {
            return Err(AuthError::Malformed("channel binding does not match"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(AuthError::Malformed("nonce does not match"));
        }
        let proof = B64.decode(proof).map_err(|_| AuthError::Malformed("proof is not base64"))?;
        let auth_message = format!("{},{},{}", self.client_first_bare, self.server_first, without_proof);
        let client_signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        if proof.len() != 32 {
            return Err(AuthError::Failed(self.user));
        }
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.secret.stored_key) {
            return Err(AuthError::Failed(self.user));
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(stored_password: &str, client_password: &str) -> Result<(), AuthError> {
        let secret = ScramSecret::derive(stored_password);
        let mut client = ScramSha256::new(client_password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start("app", secret, client.message())?;
        client.update(first.as_bytes()).map_err(|_| AuthError::Malformed("client rejected server-first"))?;
        let fin = server.finish(client.message())?;
        client.finish(fin.as_bytes()).map_err(|_| AuthError::Malformed("client rejected server signature"))
    }

    #[test]
    fn a_real_scram_client_logs_in_with_the_right_password() {
        exchange("secret", "secret").unwrap();
    }

    #[test]
    fn a_wrong_password_fails_the_proof() {
        assert!(matches!(exchange("secret", "wrong"), Err(AuthError::Failed(_))));
    }

    #[test]
    fn stored_secret_round_trips_and_verifies_cleartext() {
        let text = postgres_protocol::password::scram_sha_256(b"pw");
        let s = ScramSecret::parse(&text).unwrap();
        assert!(s.verify_password("pw"));
        assert!(!s.verify_password("px"));
        assert!(ScramSecret::parse("SCRAM-SHA-256$0:AA==$AA==:AA==").is_none());
    }

    #[test]
    fn a_decoy_is_the_same_for_the_same_name_and_shaped_like_a_real_secret() {
        let real = ScramSecret::derive("pw");
        let (a, b, c) = (ScramSecret::decoy("nobody"), ScramSecret::decoy("nobody"), ScramSecret::decoy("other"));
        assert_eq!(a, b);
        assert_ne!(a.salt, c.salt);
        assert_eq!((a.iterations, a.salt.len()), (real.iterations, real.salt.len()));
    }

    #[test]
    fn garbage_client_messages_are_malformed_not_panics() {
        for m in [&b""[..], b"n", b"n,,", b"p=tls-server-end-point,,n=,r=abc", b"\xff\xfe"] {
            assert!(ScramServer::start("u", ScramSecret::decoy("u"), m).is_err());
        }
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    /// Keys for `password` with few iterations, so that properties can run many exchanges.
    fn cheap_secret(password: &str) -> ScramSecret {
        let mut s = ScramSecret { iterations: 2, salt: b"pepper".to_vec(), stored_key: [0; 32], server_key: [0; 32] };
        let salted = s.salted_password(password);
        s.stored_key = Sha256::digest(hmac(&salted, b"Client Key")).into();
        s.server_key = hmac(&salted, b"Server Key");
        s
    }

    /// A client that has sent its first message and read the server's; returns the server and
    /// the client-final-message.
    fn halfway(password: &str) -> (ScramServer, ScramSha256, Vec<u8>) {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (server, first) = ScramServer::start("app", cheap_secret(password), client.message()).unwrap();
        client.update(first.as_bytes()).unwrap();
        let fin = client.message().to_vec();
        (server, client, fin)
    }

    fn mutate(mut m: Vec<u8>, at: proptest::sample::Index, byte: u8, op: u8) -> Vec<u8> {
        if m.is_empty() {
            return m;
        }
        let at = at.index(m.len());
        match op {
            0 => m[at] = byte,
            1 => m.truncate(at),
            2 => {
                m.remove(at);
            }
            _ => m.insert(at, byte),
        }
        m
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_client_first_messages_never_panic(data in vec(any::<u8>(), 0..200)) {
            if let Ok((_, first)) = ScramServer::start("u", ScramSecret::decoy("u"), &data) {
                prop_assert!(first.starts_with("r="));
            }
        }

        #[test]
        fn structured_client_first_messages_never_panic(
            cbind in "[nyp]?(=[a-z-]{0,10})?", authzid in "(a=[a-z]{0,5})?", attrs in vec("[a-z]?=?[!-~]{0,12}", 0..5),
        ) {
            let text = format!("{cbind},{authzid},{}", attrs.join(","));
            if let Ok((_, first)) = ScramServer::start("u", ScramSecret::decoy("u"), text.as_bytes()) {
                // The server nonce extends the client's, and nothing else gets in.
                let nonce = first.strip_prefix("r=").unwrap().split(',').next().unwrap();
                prop_assert!(nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','));
            }
        }

        #[test]
        fn arbitrary_client_final_messages_fail_without_panicking(data in vec(any::<u8>(), 0..200)) {
            let (server, _) = ScramServer::start("u", ScramSecret::decoy("u"), b"n,,n=u,r=abc").unwrap();
            prop_assert!(server.finish(&data).is_err());
        }

        #[test]
        fn a_real_exchange_with_any_password_succeeds(password in "\\PC{0,20}") {
            let (server, mut client, fin) = halfway(&password);
            let last = server.finish(&fin).unwrap();
            prop_assert!(client.finish(last.as_bytes()).is_ok());
        }

        #[test]
        fn a_mutated_client_final_message_never_logs_in(
            at in any::<proptest::sample::Index>(), byte in any::<u8>(), op in 0u8..4,
        ) {
            let (server, _, fin) = halfway("secret");
            let bad = mutate(fin.clone(), at, byte, op);
            prop_assume!(bad != fin);
            prop_assert!(server.finish(&bad).is_err());
        }

        #[test]
        fn a_mutated_client_first_message_never_panics(
            at in any::<proptest::sample::Index>(), byte in any::<u8>(), op in 0u8..4,
        ) {
            let client = ScramSha256::new(b"secret", ChannelBinding::unsupported());
            let bad = mutate(client.message().to_vec(), at, byte, op);
            let _ = ScramServer::start("u", ScramSecret::decoy("u"), &bad);
        }

        #[test]
        fn stored_secrets_round_trip(iterations in 1u32.., salt in vec(any::<u8>(), 0..32), stored in any::<[u8; 32]>(), server in any::<[u8; 32]>()) {
            let text = format!("SCRAM-SHA-256${iterations}:{}${}:{}", B64.encode(&salt), B64.encode(stored), B64.encode(server));
            let want = ScramSecret { iterations, salt, stored_key: stored, server_key: server };
            prop_assert_eq!(ScramSecret::parse(&text), Some(want));
        }

        #[test]
        fn arbitrary_stored_text_never_panics(text in "(SCRAM-SHA-256\\$)?[0-9]{0,12}:?[A-Za-z0-9+/=]{0,50}\\$?[A-Za-z0-9+/=]{0,50}:?[A-Za-z0-9+/=]{0,50}") {
            if let Some(s) = ScramSecret::parse(&text) {
                prop_assert!(s.iterations > 0);
            }
        }
    }
}
