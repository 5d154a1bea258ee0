//! The server half of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS (RFC 5802/7677 as Postgres uses
//! them): stored keys, the mechanism and channel binding choice, the server-first message, proof
//! verification and the server signature. The only channel binding type is
//! `tls-server-end-point` (RFC 5929), whose data the caller supplies.

use super::{constant_time_eq, AuthError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The SASL mechanism without channel binding.
pub const SCRAM_SHA_256: &str = "SCRAM-SHA-256";
/// The SASL mechanism with channel binding.
pub const SCRAM_SHA_256_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The channel binding type sluice supports.
const END_POINT: &str = "tls-server-end-point";

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

/// What a client's SCRAM proof reveals: its ClientKey, with the secret it was checked against.
/// With both, sluice can log in to a server that stores the same secret, without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeys {
    /// HMAC(SaltedPassword, "Client Key").
    pub client_key: [u8; 32],
    /// The secret (salt, iterations, StoredKey, ServerKey).
    pub secret: ScramSecret,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys").field("iterations", &self.secret.iterations).finish_non_exhaustive()
    }
}

/// One SCRAM exchange, server side.
#[derive(Debug)]
pub struct ScramServer {
    secret: ScramSecret,
    user: String,
    /// What the client's `c=` attribute must encode: the GS2 header, then the binding data.
    cbind_input: Vec<u8>,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ScramServer {
    /// Reads the client's mechanism and client-first-message and produces the
    /// server-first-message. `binding` is the `tls-server-end-point` data of the connection
    /// when it is on TLS (SCRAM-SHA-256-PLUS was offered), `None` otherwise.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] for an unknown mechanism, a message that is not a
    /// client-first-message, or a channel binding choice that does not fit the mechanism and
    /// the connection (including a client that says it could bind while sluice offered it:
    /// a downgrade).
    pub fn start(
        user: &str,
        secret: ScramSecret,
        mechanism: &str,
        client_first: &[u8],
        binding: Option<&[u8]>,
    ) -> Result<(ScramServer, String), AuthError> {
        let plus = match mechanism {
            SCRAM_SHA_256 => false,
            SCRAM_SHA_256_PLUS => true,
            _ => return Err(AuthError::Malformed("unsupported SASL mechanism")),
        };
        let text = std::str::from_utf8(client_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (cbind, rest) = text.split_once(',').ok_or(AuthError::Malformed("no GS2 header"))?;
        let (authzid, bare) = rest.split_once(',').ok_or(AuthError::Malformed("no GS2 header"))?;
        let bound = match (cbind, plus, binding) {
            ("n", false, _) => None,
            ("y", false, None) => None,
            ("y", false, Some(_)) => {
                return Err(AuthError::Malformed("client supports channel binding but did not use it"))
            }
            (p, true, Some(data)) if p.strip_prefix("p=") == Some(END_POINT) => Some(data),
            (p, true, Some(_)) if p.starts_with("p=") => {
                return Err(AuthError::Malformed("unsupported channel binding type"))
            }
            (_, true, None) => return Err(AuthError::Malformed("channel binding is not available on this connection")),
            (_, true, Some(_)) => return Err(AuthError::Malformed("SCRAM-SHA-256-PLUS without channel binding")),
            (_, false, _) => return Err(AuthError::Malformed("channel binding without SCRAM-SHA-256-PLUS")),
        };
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
        let mut cbind_input = format!("{cbind},{authzid},").into_bytes();
        cbind_input.extend_from_slice(bound.unwrap_or_default());
        Ok((
            ScramServer {
                secret,
                user: user.to_owned(),
                cbind_input,
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
        self.finish_keys(client_final).map(|(fin, _)| fin)
    }

    /// Like [`ScramServer::finish`], also returning the client's keys recovered from its proof.
    ///
    /// # Errors
    /// As [`ScramServer::finish`].
    pub fn finish_keys(self, client_final: &[u8]) -> Result<(String, ClientKeys), AuthError> {
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
        if !constant_time_eq(channel.as_bytes(), B64.encode(&self.cbind_input).as_bytes()) {
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
        Ok((format!("v={}", B64.encode(server_signature)), ClientKeys { client_key, secret: self.secret }))
    }
}

/// The client half of SCRAM-SHA-256 with keys instead of a password (see [`ClientKeys`]).
#[derive(Debug)]
pub struct ScramClient {
    keys: ClientKeys,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl ScramClient {
    /// Starts an exchange; returns the client-first-message.
    pub fn start(keys: ClientKeys) -> (ScramClient, String) {
        let mut raw = [0u8; 18];
        rand::thread_rng().fill_bytes(&mut raw);
        let nonce = B64.encode(raw);
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (ScramClient { keys, client_first_bare, nonce, auth_message: None }, first)
    }

    /// Reads the server-first-message; returns the client-final-message.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] for a message that is not a server-first-message, and
    /// [`AuthError::Unusable`] when the server's salt or iterations differ from the secret the
    /// keys came from (the server stores another secret).
    pub fn update(&mut self, server_first: &[u8]) -> Result<String, AuthError> {
        let text = std::str::from_utf8(server_first).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok();
            }
        }
        let nonce = nonce.filter(|n| n.starts_with(&self.nonce) && n.len() > self.nonce.len());
        let nonce = nonce.ok_or(AuthError::Malformed("server nonce does not extend ours"))?;
        if salt.as_deref() != Some(&self.keys.secret.salt[..]) || iterations != Some(self.keys.secret.iterations) {
            return Err(AuthError::Unusable(String::new(), "the server's SCRAM secret (salt or iterations differ)"));
        }
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac(&self.keys.secret.stored_key, auth_message.as_bytes());
        let mut proof = [0u8; 32];
        for (i, p) in proof.iter_mut().enumerate() {
            *p = self.keys.client_key[i] ^ signature[i];
        }
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks the server-final-message: the server proves it knows the secret too.
    ///
    /// # Errors
    /// [`AuthError::Malformed`] when it does not.
    pub fn finish(self, server_final: &[u8]) -> Result<(), AuthError> {
        let auth_message = self.auth_message.ok_or(AuthError::Malformed("server-final before server-first"))?;
        let text = std::str::from_utf8(server_final).map_err(|_| AuthError::Malformed("not UTF-8"))?;
        let verifier = text.strip_prefix("v=").and_then(|v| B64.decode(v).ok());
        let expected = hmac(&self.keys.secret.server_key, auth_message.as_bytes());
        match verifier {
            Some(v) if constant_time_eq(&v, &expected) => Ok(()),
            _ => Err(AuthError::Malformed("the server's signature does not match")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn exchange(stored_password: &str, client_password: &str) -> Result<(), AuthError> {
        bound_exchange(stored_password, client_password, ChannelBinding::unsupported(), SCRAM_SHA_256, None)
    }

    fn bound_exchange(
        stored_password: &str,
        client_password: &str,
        cbind: ChannelBinding,
        mechanism: &str,
        binding: Option<&[u8]>,
    ) -> Result<(), AuthError> {
        let secret = ScramSecret::derive(stored_password);
        let mut client = ScramSha256::new(client_password.as_bytes(), cbind);
        let (server, first) = ScramServer::start("app", secret, mechanism, client.message(), binding)?;
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
    fn keys_recovered_from_a_clients_proof_log_in_to_a_server_with_the_same_secret() {
        let stored = ScramSecret::derive("pencil");
        // A real client logs in to sluice; sluice recovers its keys.
        let mut client = ScramSha256::new(b"pencil", ChannelBinding::unsupported());
        let (server, first) = ScramServer::start("u", stored.clone(), "SCRAM-SHA-256", client.message(), None).unwrap();
        client.update(first.as_bytes()).unwrap();
        let (fin, keys) = server.finish_keys(client.message()).unwrap();
        client.finish(fin.as_bytes()).unwrap();
        // sluice logs in with them to a server that stores the same secret.
        let (mut sluice, first) = ScramClient::start(keys.clone());
        let (upstream, server_first) = ScramServer::start("u", stored.clone(), "SCRAM-SHA-256", first.as_bytes(), None).unwrap();
        let client_final = sluice.update(server_first.as_bytes()).unwrap();
        let server_final = upstream.finish(client_final.as_bytes()).unwrap();
        sluice.finish(server_final.as_bytes()).unwrap();
        // Not to one that stores another secret for the same password.
        let (mut sluice, first) = ScramClient::start(keys);
        let (_, server_first) = ScramServer::start("u", ScramSecret::derive("pencil"), "SCRAM-SHA-256", first.as_bytes(), None).unwrap();
        assert!(matches!(sluice.update(server_first.as_bytes()), Err(AuthError::Unusable(..))));
    }

    #[test]
    fn a_server_that_cannot_prove_the_secret_is_refused() {
        let keys = ClientKeys { client_key: [1; 32], secret: ScramSecret::derive("x") };
        let (mut c, _) = ScramClient::start(keys.clone());
        let salt = B64.encode(&keys.secret.salt);
        let first = format!("r={}abc,s={salt},i={}", c.nonce, keys.secret.iterations);
        c.update(first.as_bytes()).unwrap();
        assert!(c.finish(b"v=AAAA").is_err());
        let (mut c, _) = ScramClient::start(keys);
        assert!(c.update(b"r=someone-else,s=AAAA,i=4096").is_err());
        assert!(c.update(&[0xff]).is_err());
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
            assert!(ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256, m, None).is_err());
            let valid_plus = m.starts_with(b"p=");
            assert_eq!(ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256_PLUS, m, Some(b"x")).is_ok(), valid_plus);
        }
        assert!(ScramServer::start("u", ScramSecret::decoy("u"), "PLAIN", b"n,,n=,r=abc", None).is_err());
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
        let (server, first) = ScramServer::start("app", cheap_secret(password), SCRAM_SHA_256, client.message(), None).unwrap();
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
            if let Ok((_, first)) = ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256, &data, None) {
                prop_assert!(first.starts_with("r="));
            }
        }

        #[test]
        fn structured_client_first_messages_never_panic(
            cbind in "[nyp]?(=[a-z-]{0,10})?", authzid in "(a=[a-z]{0,5})?", attrs in vec("[a-z]?=?[!-~]{0,12}", 0..5),
        ) {
            let text = format!("{cbind},{authzid},{}", attrs.join(","));
            if let Ok((_, first)) = ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256, text.as_bytes(), None) {
                // The server nonce extends the client's, and nothing else gets in.
                let nonce = first.strip_prefix("r=").unwrap().split(',').next().unwrap();
                prop_assert!(nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','));
            }
        }

        #[test]
        fn arbitrary_client_final_messages_fail_without_panicking(data in vec(any::<u8>(), 0..200)) {
            let (server, _) = ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256, b"n,,n=u,r=abc", None).unwrap();
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
            let _ = ScramServer::start("u", ScramSecret::decoy("u"), SCRAM_SHA_256, &bad, None);
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

    #[test]
    fn plus_binds_to_the_certificate_hash() {
        let hash = [7u8; 32];
        let cb = || ChannelBinding::tls_server_end_point(hash.to_vec());
        bound_exchange("secret", "secret", cb(), SCRAM_SHA_256_PLUS, Some(&hash)).unwrap();
        // Another certificate's hash (a man in the middle) fails.
        let e = bound_exchange("secret", "secret", cb(), SCRAM_SHA_256_PLUS, Some(&[8u8; 32])).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{e}");
        // A wrong password still fails the proof.
        let e = bound_exchange("secret", "wrong", cb(), SCRAM_SHA_256_PLUS, Some(&hash)).unwrap_err();
        assert!(matches!(e, AuthError::Failed(_)), "{e}");
    }

    #[test]
    fn binding_choices_must_fit_mechanism_and_connection() {
        let hash = [7u8; 32];
        // PLUS without TLS, or with binding data under the plain mechanism.
        let cb = || ChannelBinding::tls_server_end_point(hash.to_vec());
        assert!(bound_exchange("s", "s", cb(), SCRAM_SHA_256_PLUS, None).is_err());
        assert!(bound_exchange("s", "s", cb(), SCRAM_SHA_256, Some(&hash)).is_err());
        // "y" (could bind, server did not offer) is fine without TLS and a downgrade on TLS.
        let secret = ScramSecret::derive("s");
        assert!(ScramServer::start("u", secret.clone(), SCRAM_SHA_256, b"y,,n=,r=abc", None).is_ok());
        assert!(ScramServer::start("u", secret.clone(), SCRAM_SHA_256, b"y,,n=,r=abc", Some(&hash)).is_err());
        // Plain SCRAM on a TLS connection is still allowed.
        bound_exchange("s", "s", ChannelBinding::unsupported(), SCRAM_SHA_256, Some(&hash)).unwrap();
        assert!(ScramServer::start("u", secret, SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc", Some(&hash)).is_err());
    }
}
