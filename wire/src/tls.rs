//! Mutual TLS for members' and clients' TCP connections (rustls, in user space: these machines'
//! kernels have no TLS offload). Shared by the member runtime (`derecho_runtime::net`) and the
//! client (`derecho_client`).
//!
//! A [`TlsIdentity`] is what one process presents and trusts: its certificate chain and key,
//! and the certificate authority every peer's certificate must chain to. Both ends of every
//! connection present a certificate (mutual TLS). Names are bound by the layers above, after the
//! handshake: a member's certificate names it `node-N.derecho` ([`node_name`]), checked against
//! the id it claims in its hello (the runtime's `TcpStream::peer_is_node`); an external client's
//! certificate names it however the operator likes, and its first DNS name is its identity
//! (`TcpStream::peer_identity`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// The DNS name a member's certificate carries for node id `id`.
pub fn node_name(id: u32) -> String {
    format!("node-{id}.derecho")
}

/// A TLS setting that cannot be used; the message names the file and what is wrong with it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds nothing usable.
    #[error("{}: {what}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificates and key do not make a usable configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// What one process presents and trusts on every connection (see the module documentation).
#[derive(Clone)]
pub struct TlsIdentity {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The first DNS name of its own certificate.
    name: String,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").field("name", &self.name).finish_non_exhaustive()
    }
}

fn file_error(path: &Path, what: impl Into<String>) -> TlsError {
    TlsError::File { path: path.to_path_buf(), what: what.into() }
}

impl TlsIdentity {
    /// Reads the trusted authority (`ca`: PEM certificates), this process's certificate chain
    /// (`cert`: PEM, its own first) and its private key (`key`: PEM, PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// [`TlsError::File`] naming the file that cannot be read or parsed, or holds nothing of
    /// what it should; [`TlsError::Config`] when the key does not fit the certificate.
    pub fn from_pem_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| file_error(p, format!("cannot read it: {e}")));
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        Self::build(&ca_pem, &cert_pem, &key_pem, [ca, cert, key])
    }

    /// [`TlsIdentity::from_pem_files`] from the files' contents.
    ///
    /// # Errors
    ///
    /// As [`TlsIdentity::from_pem_files`], naming the inputs `ca`, `cert` and `key`.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        Self::build(ca, cert, key, [Path::new("ca"), Path::new("cert"), Path::new("key")])
    }

    fn build(ca: &[u8], cert: &[u8], key: &[u8], names: [&Path; 3]) -> Result<Self, TlsError> {
        let [ca_path, cert_path, key_path] = names;
        let certs = |pem: &[u8], path: &Path| -> Result<Vec<CertificateDer<'static>>, TlsError> {
            let list = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(path, format!("not PEM certificates: {e}")))?;
            if list.is_empty() {
                return Err(file_error(path, "holds no certificate (expected PEM \"BEGIN CERTIFICATE\" blocks)"));
            }
            Ok(list)
        };
        let authorities = certs(ca, ca_path)?;
        let chain = certs(cert, cert_path)?;
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| file_error(key_path, format!("no private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for c in authorities {
            roots.add(c).map_err(|e| file_error(ca_path, format!("not a usable certificate authority: {e}")))?;
        }
        let roots = Arc::new(roots);
        let name = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| file_error(cert_path, format!("not a usable certificate: {e}")))?
            .valid_dns_names()
            .next()
            .map(str::to_string)
            .ok_or_else(|| file_error(cert_path, "names no DNS name (subject alternative name)"))?;
        // ring: it builds quickly here; it has no post-quantum key exchange (hence deprecated).
        #[allow(deprecated)]
        let mut provider = rustls::crypto::ring::default_provider();
        // AES-128-GCM first: as safe for this use, and faster than AES-256 (the default first).
        provider.cipher_suites.sort_by_key(|s| match s.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => 0,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => 1,
            _ => 2,
        });
        let provider = Arc::new(provider);
        let config = |e: rustls::Error| TlsError::Config(e.to_string());
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| file_error(ca_path, format!("cannot verify clients with it: {e}")))?;
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| {
                file_error(key_path, format!("does not fit the certificate in {}: {e}", cert_path.display()))
            })?;
        // No session tickets: connections are long-lived, and nothing may arrive after the
        // handshake that is not application data.
        server.send_tls13_tickets = 0;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| file_error(ca_path, format!("cannot verify servers with it: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(config)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(IssuedByTheCa(server_verifier)))
            .with_client_auth_cert(chain, key)
            .map_err(|e| {
                file_error(key_path, format!("does not fit the certificate in {}: {e}", cert_path.display()))
            })?;
        Ok(Self { server: Arc::new(server), client: Arc::new(client), name })
    }

    /// The first DNS name of this process's own certificate.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rustls configuration for connections this process accepts.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The rustls configuration for connections this process makes (any server name: see
    /// [`TlsIdentity::server_name`]).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The server name to give rustls when connecting: it is not what is checked (the
    /// authority's signature is; the layer above binds names to ids), it must only be valid.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("derecho").expect("a valid name")
    }
}

/// The first DNS name of a certificate, if it has one.
pub fn first_dns_name(cert: &CertificateDer<'_>) -> Option<String> {
    webpki::EndEntityCert::try_from(cert).ok()?.valid_dns_names().next().map(str::to_string)
}

/// Whether `cert` is valid for `node`'s name ([`node_name`]).
pub fn names_node(cert: &CertificateDer<'_>, node: u32) -> bool {
    let Ok(name) = ServerName::try_from(node_name(node)) else { return false };
    webpki::EndEntityCert::try_from(cert).is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
}

/// Accepts a server certificate the authority issued, whatever its name: a member dialling an
/// address does not always know whom it reaches (a contact, a joiner's listener); the layer
/// above binds the name to the id after the handshake.
#[derive(Debug)]
struct IssuedByTheCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IssuedByTheCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain is checked against the certificate's own name.
        let own = first_dns_name(end_entity)
            .and_then(|n| ServerName::try_from(n).ok())
            .ok_or(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))?;
        self.0.verify_server_cert(end_entity, intermediates, &own, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A throw-away certificate authority for development and tests: it issues certificates for
/// any name, held in memory (or written out for member processes, [`DevCa::write`]). Never for
/// production: whoever holds its key can make any identity.
pub struct DevCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

fn rcgen_error(e: rcgen::Error) -> TlsError {
    TlsError::Config(format!("generating a development certificate: {e}"))
}

impl DevCa {
    /// A new authority with a fresh key.
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] if the key or certificate cannot be made.
    pub fn new() -> Result<Self, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, "derecho development CA");
        let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Self { issuer: rcgen::Issuer::new(params, key), pem: cert.pem() })
    }

    /// The authority's certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.pem
    }

    /// A certificate for DNS name `name`, and its key (both PEM).
    ///
    /// # Errors
    ///
    /// [`TlsError::Config`] if `name` is not a usable DNS name.
    pub fn issue(&self, name: &str) -> Result<(String, String), TlsError> {
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(rcgen_error)?;
        let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// An identity named `name` that trusts this authority.
    ///
    /// # Errors
    ///
    /// As [`DevCa::issue`].
    pub fn identity(&self, name: &str) -> Result<TlsIdentity, TlsError> {
        let (cert, key) = self.issue(name)?;
        TlsIdentity::from_pem(self.pem.as_bytes(), cert.as_bytes(), key.as_bytes())
    }

    /// Writes the files of members `ids` into `dir`: `ca.pem`, and `node-N.pem` and `node-N.key`
    /// naming each member N ([`node_name`]), as a member's `[tls] dir` reads them.
    ///
    /// # Errors
    ///
    /// As [`DevCa::write`].
    pub fn write_nodes(&self, dir: &Path, ids: impl IntoIterator<Item = u32>) -> Result<(), TlsError> {
        for id in ids {
            self.write(dir, &format!("node-{id}"), &node_name(id))?;
        }
        Ok(())
    }

    /// Writes `ca.pem`, `FILE.pem` and `FILE.key` (the key readable by its owner only) for
    /// `name` into `dir` (created, readable by its owner only, if missing), replacing what is
    /// there; returns the three paths.
    ///
    /// # Errors
    ///
    /// [`TlsError::File`] naming a file that cannot be written.
    pub fn write(&self, dir: &Path, file: &str, name: &str) -> Result<[PathBuf; 3], TlsError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let (cert, key) = self.issue(name)?;
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| file_error(dir, format!("cannot create the directory: {e}")))?;
        }
        let paths = [dir.join("ca.pem"), dir.join(format!("{file}.pem")), dir.join(format!("{file}.key"))];
        for (path, text, mode) in [(&paths[0], &self.pem, 0o644), (&paths[1], &cert, 0o644), (&paths[2], &key, 0o600)] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .map_err(|e| file_error(path, format!("cannot write it: {e}")))?;
            // The mode applies to a new file only: an existing one gets it here.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
                .map_err(|e| file_error(path, format!("cannot set its mode: {e}")))?;
            f.write_all(text.as_bytes()).map_err(|e| file_error(path, format!("cannot write it: {e}")))?;
        }
        Ok(paths)
    }
}
