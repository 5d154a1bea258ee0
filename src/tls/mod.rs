//! TLS on both sides of sluice. This module owns:
//!
//! - [`Stream`]: a client or server socket, plaintext or TLS, that logins, the relay and server
//!   connections read and write without caring which (plaintext costs one `match` per call);
//! - [`TlsSettings`]: what `[tls]` asks for, built into rustls configurations: the acceptor
//!   with sluice's certificate for clients, and the connector with its verification policy for
//!   servers. The live settings sit in an `ArcSwap` in [`crate::app::Shared`], so RELOAD swaps
//!   the certificate for new handshakes while connected clients keep theirs;
//! - opening TLS toward a server the Postgres way (SSLRequest, then 'S' or 'N') per
//!   `server_mode` ([`connect`]);
//! - the `tls-server-end-point` channel binding data of sluice's certificate (RFC 5929), which
//!   SCRAM-SHA-256-PLUS binds a client's login to ([`end_point_hash`]).
//!
//! rustls with the `ring` provider does the cryptography; TLS 1.2 is the oldest version spoken.

mod binding;
mod connect;
mod settings;
mod stream;

pub use binding::end_point_hash;
pub use connect::connect;
pub use settings::{ClientMode, ClientTls, ServerMode, ServerTls, TlsSettings};
pub use stream::Stream;

use std::path::PathBuf;

/// Errors from loading TLS material, handshakes and the TLS negotiation with servers.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate, key or CA file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A file is not valid PEM of the expected kind.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{path} holds no PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A setting needs a file that is not configured.
    #[error("`{key}` is required by {needed_by}")]
    Missing {
        /// The missing key, e.g. `tls.server_ca`.
        key: &'static str,
        /// What needs it.
        needed_by: &'static str,
    },
    /// rustls refused the configuration (a key that does not match the certificate, ...).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The TLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
    /// The server answered 'N' to SSLRequest and `server_mode` does not allow plaintext.
    #[error("server {addr} does not accept TLS, and tls.server_mode = \"{mode}\" requires it")]
    ServerRefused {
        /// host:port
        addr: String,
        /// The configured mode.
        mode: &'static str,
    },
    /// The server answered SSLRequest with something other than 'S' or 'N'.
    #[error("server answered SSLRequest with byte {0:#04x}, not 'S' or 'N'")]
    BadAnswer(u8),
    /// The server's host cannot be a TLS server name.
    #[error("\"{0}\" is not a valid TLS server name")]
    ServerName(String),
    /// An encryption request arrived on a connection that is already encrypted.
    #[error("encryption requested twice")]
    AlreadyEncrypted,
    /// Socket IO failed while negotiating.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// TLS for a tokio-postgres connection to a server (the replica monitor's) as `tls.mode`
/// asks, with the same verification as sluice's own server connections; sets the connection's
/// `sslmode`. `None` for `disable`.
pub fn postgres_tls(
    tls: &ServerTls,
    config: &mut tokio_postgres::Config,
) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
    let client_config = tls.config()?;
    config.ssl_mode(match tls.mode {
        ServerMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Some(tokio_postgres_rustls::MakeRustlsConnect::new(client_config.as_ref().clone()))
}
