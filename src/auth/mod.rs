//! Authentication, without IO: the user store built from `[auth]` (inline users and a
//! PgBouncer-style `auth_file`), checks of cleartext and MD5 answers, and the server half of a
//! SCRAM-SHA-256 exchange. The session drives the exchange over the socket; sluice's own login to
//! Postgres lives in [`crate::server`].

pub mod query;
pub mod scram;
pub mod userlist;

use crate::config::{AuthMethod, Config};
use md5::{Digest, Md5};
use std::collections::HashMap;
use std::sync::Arc;

/// Errors from authentication.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password or proof did not match, or the user is unknown (the two are not told apart).
    #[error("password authentication failed for user \"{0}\"")]
    Failed(String),
    /// The client answered with something that is not a valid step of the exchange.
    #[error("malformed authentication message: {0}")]
    Malformed(&'static str),
    /// The method cannot work with the stored secret (an MD5 secret under SCRAM).
    #[error("user \"{0}\" has a stored secret that cannot be used with {1}")]
    Unusable(String, &'static str),
    /// The auth file could not be read.
    #[error("auth_file {path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A stored password in one of the forms Postgres and PgBouncer use.
#[derive(Debug, Clone)]
pub enum Secret {
    /// The password itself (with its SCRAM keys derived once at load).
    Plain {
        /// The password.
        password: String,
        /// SCRAM keys derived from it.
        scram: scram::ScramSecret,
    },
    /// `md5` followed by hex(md5(password || user)).
    Md5(String),
    /// SCRAM-SHA-256 keys.
    Scram(scram::ScramSecret),
}

impl Secret {
    /// Reads a secret as written in config or an auth file.
    pub fn parse(text: &str) -> Secret {
        if let Some(s) = scram::ScramSecret::parse(text) {
            return Secret::Scram(s);
        }
        if text.len() == 35 && text.starts_with("md5") && text[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Secret::Md5(text.to_ascii_lowercase());
        }
        Secret::Plain { password: text.to_owned(), scram: scram::ScramSecret::derive(text) }
    }

    /// The plain password, when stored.
    pub fn plain(&self) -> Option<&str> {
        match self {
            Secret::Plain { password, .. } => Some(password),
            _ => None,
        }
    }

    /// The stored MD5 secret, when that is what is stored.
    pub fn md5(&self) -> Option<&str> {
        match self {
            Secret::Md5(s) => Some(s),
            _ => None,
        }
    }

    /// Keys for a SCRAM exchange with a client.
    pub fn scram(&self) -> Option<&scram::ScramSecret> {
        match self {
            Secret::Plain { scram, .. } | Secret::Scram(scram) => Some(scram),
            Secret::Md5(_) => None,
        }
    }
}

/// The users sluice knows, from `[auth]`.
#[derive(Debug, Default)]
pub struct UserStore {
    users: HashMap<String, Arc<Secret>>,
    /// The method clients must use.
    pub method: AuthMethod,
}

impl UserStore {
    /// Builds the store from the configuration: the auth file first, inline users override.
    ///
    /// # Errors
    /// [`AuthError::File`] when the auth file cannot be read or parsed.
    pub fn from_config(config: &Config) -> Result<Arc<UserStore>, AuthError> {
        let mut users = HashMap::new();
        if let Some(f) = &config.auth.auth_file {
            let path = config.resolve(f);
            for (name, secret) in userlist::parse_file(&path)? {
                users.insert(name, Arc::new(Secret::parse(&secret)));
            }
        }
        for u in &config.auth.users {
            users.insert(u.name.clone(), Arc::new(Secret::parse(&u.password)));
        }
        Ok(Arc::new(UserStore { users, method: config.auth.method }))
    }

    /// The stored secret of a user.
    pub fn get(&self, user: &str) -> Option<&Arc<Secret>> {
        self.users.get(user)
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let d = h.finalize();
    let mut s = String::with_capacity(32);
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The MD5 secret (`md5` + hex) of a user's password.
pub fn md5_secret(user: &str, password: &str) -> String {
    format!("md5{}", md5_hex(&[password.as_bytes(), user.as_bytes()]))
}

/// The answer to an MD5 challenge with `salt`, from a stored MD5 secret (`md5` + hex): all a
/// login needs, so sluice can log in to a server with a secret it looked up.
pub fn md5_answer(stored: &str, salt: [u8; 4]) -> String {
    format!("md5{}", md5_hex(&[stored.get(3..).unwrap_or_default().as_bytes(), &salt]))
}

/// Compares in time that does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a client's answer to an MD5 challenge against a stored secret.
///
/// # Errors
/// [`AuthError::Failed`] on a mismatch; [`AuthError::Unusable`] for a SCRAM-only secret.
pub fn check_md5(user: &str, secret: &Secret, salt: [u8; 4], answer: &str) -> Result<(), AuthError> {
    let stored = match secret {
        Secret::Plain { password, .. } => md5_secret(user, password),
        Secret::Md5(s) => s.clone(),
        Secret::Scram(_) => return Err(AuthError::Unusable(user.to_owned(), "md5")),
    };
    if constant_time_eq(md5_answer(&stored, salt).as_bytes(), answer.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Failed(user.to_owned()))
    }
}

/// Checks a cleartext password against a stored secret of any kind.
///
/// # Errors
/// [`AuthError::Failed`] on a mismatch.
pub fn check_cleartext(user: &str, secret: &Secret, answer: &str) -> Result<(), AuthError> {
    let ok = match secret {
        Secret::Plain { password, .. } => constant_time_eq(password.as_bytes(), answer.as_bytes()),
        Secret::Md5(s) => constant_time_eq(s.as_bytes(), md5_secret(user, answer).as_bytes()),
        Secret::Scram(s) => s.verify_password(answer),
    };
    if ok {
        Ok(())
    } else {
        Err(AuthError::Failed(user.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_answer_checks_against_plain_and_md5_secrets() {
        let salt = [1, 2, 3, 4];
        let answer = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        check_md5("app", &Secret::parse("secret"), salt, &answer).unwrap();
        check_md5("app", &Secret::parse(&md5_secret("app", "secret")), salt, &answer).unwrap();
        assert!(check_md5("app", &Secret::parse("other"), salt, &answer).is_err());
    }

    #[test]
    fn cleartext_checks_against_every_secret_kind() {
        let scram = postgres_protocol::password::scram_sha_256(b"secret");
        for stored in ["secret".to_string(), md5_secret("app", "secret"), scram] {
            let s = Secret::parse(&stored);
            check_cleartext("app", &s, "secret").unwrap();
            assert!(check_cleartext("app", &s, "wrong").is_err(), "{stored}");
        }
    }

    #[test]
    fn md5_is_unusable_with_a_scram_secret() {
        let s = Secret::parse(&postgres_protocol::password::scram_sha_256(b"x"));
        assert!(matches!(check_md5("u", &s, [0; 4], "md5abc"), Err(AuthError::Unusable(..))));
    }

    use proptest::prelude::*;

    proptest! {
        // Plain secrets derive SCRAM keys (4096 PBKDF2 rounds) on parse: few cases.
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        #[test]
        fn any_stored_text_parses_to_some_secret(text in "\\PC{0,40}|md5[0-9a-fA-F]{30,34}|SCRAM-SHA-256\\$[0-9]{1,5}:[A-Za-z0-9+/=]{0,30}\\$[A-Za-z0-9+/=]{0,50}:[A-Za-z0-9+/=]{0,50}") {
            match Secret::parse(&text) {
                Secret::Md5(s) => prop_assert!(s.len() == 35 && s.starts_with("md5")),
                Secret::Plain { password, .. } => prop_assert_eq!(password, text),
                Secret::Scram(_) => prop_assert!(text.starts_with("SCRAM-SHA-256$")),
            }
        }

        #[test]
        fn answers_of_any_shape_are_refused_without_panicking(answer in "\\PC{0,60}", salt in any::<[u8; 4]>()) {
            let plain = Secret::parse("secret");
            let md5 = Secret::parse(&md5_secret("app", "secret"));
            prop_assume!(answer != "secret");
            prop_assert!(check_md5("app", &plain, salt, &answer).is_err());
            prop_assert!(check_md5("app", &md5, salt, &answer).is_err());
            prop_assert!(check_cleartext("app", &plain, &answer).is_err());
            prop_assert!(check_cleartext("app", &md5, &answer).is_err());
        }
    }
}
