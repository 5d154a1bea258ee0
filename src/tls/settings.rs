//! `[tls]` turned into rustls configurations: the acceptor for clients and the connector (with
//! its verification policy) for servers.

use super::TlsError;
use crate::config::Config;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The TLS versions sluice speaks on both sides: 1.3, and 1.2 as the minimum.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// `tls.client_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// SSLRequest is answered 'N'.
    Disable,
    /// TLS if the client asks, plaintext otherwise.
    Allow,
    /// The same as `Allow` for a server: TLS if the client asks.
    Prefer,
    /// A plaintext StartupMessage is refused (28000).
    Require,
}

impl ClientMode {
    /// Reads the configured name (validated by [`Config::validate`]; unknown means disable).
    pub fn parse(name: &str) -> ClientMode {
        match name {
            "allow" => ClientMode::Allow,
            "prefer" => ClientMode::Prefer,
            "require" => ClientMode::Require,
            _ => ClientMode::Disable,
        }
    }
}

/// `tls.server_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// Plaintext; no SSLRequest.
    Disable,
    /// TLS if the server accepts it (unverified), plaintext otherwise.
    Prefer,
    /// TLS or fail; the certificate is not verified.
    Require,
    /// TLS with the chain verified against `server_ca`, not the host name.
    VerifyCa,
    /// TLS with the chain and the host name verified.
    VerifyFull,
}

impl ServerMode {
    /// Reads the configured name (validated by [`Config::validate`]; unknown means prefer).
    pub fn parse(name: &str) -> ServerMode {
        match name {
            "disable" => ServerMode::Disable,
            "require" => ServerMode::Require,
            "verify-ca" => ServerMode::VerifyCa,
            "verify-full" => ServerMode::VerifyFull,
            _ => ServerMode::Prefer,
        }
    }

    /// The configured name.
    pub fn name(self) -> &'static str {
        match self {
            ServerMode::Disable => "disable",
            ServerMode::Prefer => "prefer",
            ServerMode::Require => "require",
            ServerMode::VerifyCa => "verify-ca",
            ServerMode::VerifyFull => "verify-full",
        }
    }
}

/// TLS toward clients.
#[derive(Clone)]
pub struct ClientTls {
    /// The configured mode.
    pub mode: ClientMode,
    acceptor: Option<TlsAcceptor>,
    end_point: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("mode", &self.mode).field("acceptor", &self.acceptor.is_some()).finish()
    }
}

impl ClientTls {
    /// The acceptor, unless the mode is `disable`.
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }

    /// The `tls-server-end-point` binding data of the certificate, when its signature
    /// algorithm allows one (see [`super::end_point_hash`]).
    pub fn end_point(&self) -> Option<&Arc<[u8]>> {
        self.end_point.as_ref()
    }
}

/// TLS toward servers.
#[derive(Clone)]
pub struct ServerTls {
    /// The configured mode.
    pub mode: ServerMode,
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("mode", &self.mode).finish()
    }
}

impl ServerTls {
    /// `prefer` without a configuration file: TLS when offered, the certificate not checked.
    ///
    /// # Errors
    /// [`TlsError::Config`] if rustls refuses the protocol versions (it does not).
    pub fn prefer() -> Result<ServerTls, TlsError> {
        let mut config = Config::default();
        config.tls.server_mode = "prefer".into();
        server_tls(&config)
    }

    /// The rustls configuration, unless the mode is `disable`.
    pub fn config(&self) -> Option<&Arc<ClientConfig>> {
        self.config.as_ref()
    }
}

/// Both sides, as one configuration asks for them; swapped whole on reload.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Toward clients.
    pub client: ClientTls,
    /// Toward servers.
    pub server: ServerTls,
}

impl Default for TlsSettings {
    /// Plaintext on both sides.
    fn default() -> Self {
        TlsSettings {
            client: ClientTls { mode: ClientMode::Disable, acceptor: None, end_point: None },
            server: ServerTls { mode: ServerMode::Disable, config: None },
        }
    }
}

impl TlsSettings {
    /// Reads the certificate, key and CA files `[tls]` names and builds both sides.
    ///
    /// # Errors
    /// [`TlsError`] naming the file that cannot be read or used.
    pub fn from_config(config: &Config) -> Result<TlsSettings, TlsError> {
        let client = client_tls(config)?;
        let server = server_tls(config)?;
        Ok(TlsSettings { client, server })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Every certificate in a PEM file, in order.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem { path: path.to_owned(), source })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.to_owned() });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| TlsError::Pem { path: path.to_owned(), source })
}

fn required(config: &Config, p: &Option<PathBuf>, key: &'static str, needed_by: &'static str) -> Result<PathBuf, TlsError> {
    p.as_deref().map(|p| config.resolve(p)).ok_or(TlsError::Missing { key, needed_by })
}

fn client_tls(config: &Config) -> Result<ClientTls, TlsError> {
    let mode = ClientMode::parse(&config.tls.client_mode);
    if mode == ClientMode::Disable {
        return Ok(ClientTls { mode, acceptor: None, end_point: None });
    }
    let cert = required(config, &config.tls.cert, "tls.cert", "tls.client_mode")?;
    let key = required(config, &config.tls.key, "tls.key", "tls.client_mode")?;
    let chain = certificates(&cert)?;
    let end_point = chain.first().and_then(|c| super::end_point_hash(c)).map(Arc::from);
    let mut server_config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key(&key)?)?;
    server_config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(ClientTls { mode, acceptor: Some(TlsAcceptor::from(Arc::new(server_config))), end_point })
}

fn server_tls(config: &Config) -> Result<ServerTls, TlsError> {
    let mode = ServerMode::parse(&config.tls.server_mode);
    let builder = ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
    let supported = provider().signature_verification_algorithms;
    let client_config = match mode {
        ServerMode::Disable => return Ok(ServerTls { mode, config: None }),
        ServerMode::Prefer | ServerMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainCheck { roots: None, supported }))
            .with_no_client_auth(),
        ServerMode::VerifyCa => {
            let roots = roots(config, "tls.server_mode = \"verify-ca\"")?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainCheck { roots: Some(Arc::new(roots)), supported }))
                .with_no_client_auth()
        }
        ServerMode::VerifyFull => {
            builder.with_root_certificates(roots(config, "tls.server_mode = \"verify-full\"")?).with_no_client_auth()
        }
    };
    Ok(ServerTls { mode, config: Some(Arc::new(client_config)) })
}

fn roots(config: &Config, needed_by: &'static str) -> Result<RootCertStore, TlsError> {
    let path = required(config, &config.tls.server_ca, "tls.server_ca", needed_by)?;
    let mut roots = RootCertStore::empty();
    for cert in certificates(&path)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// Checks a server's certificate short of its host name: against `roots` (`verify-ca`), or
/// not at all (`prefer`, `require`: encryption without authentication, as libpq's modes of
/// those names). The handshake signatures are checked either way.
#[derive(Debug)]
struct ChainCheck {
    roots: Option<Arc<RootCertStore>>,
    supported: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, self.supported.all)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.supported)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.supported)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.supported.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(ClientMode::parse("require"), ClientMode::Require);
        assert_eq!(ClientMode::parse("disable"), ClientMode::Disable);
        for m in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(ServerMode::parse(m).name(), m);
        }
    }

    #[test]
    fn missing_files_are_named() {
        let mut config = Config::default();
        config.tls.client_mode = "require".into();
        config.tls.cert = Some("/nonexistent/sluice-test.crt".into());
        config.tls.key = Some("/nonexistent/sluice-test.key".into());
        let e = TlsSettings::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("sluice-test.crt"), "{e}");
        let mut config = Config::default();
        config.tls.server_mode = "verify-full".into();
        let e = TlsSettings::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("tls.server_ca"), "{e}");
    }

    #[test]
    fn generated_certificate_and_ca_load() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), key.serialize_pem()).unwrap();
        let mut config = Config::default();
        config.tls.client_mode = "prefer".into();
        config.tls.cert = Some(dir.path().join("c.pem"));
        config.tls.key = Some(dir.path().join("k.pem"));
        config.tls.server_mode = "verify-ca".into();
        config.tls.server_ca = Some(dir.path().join("c.pem"));
        let s = TlsSettings::from_config(&config).unwrap();
        assert!(s.client.acceptor().is_some());
        assert_eq!(s.client.end_point().map(|e| e.len()), Some(32));
        assert!(s.server.config().is_some());
        // A key that is not PEM is refused with the file's name.
        std::fs::write(dir.path().join("k.pem"), "not a key").unwrap();
        let e = TlsSettings::from_config(&config).unwrap_err().to_string();
        assert!(e.contains("k.pem"), "{e}");
    }
}
