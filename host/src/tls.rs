//! TLS for the server, the peers and the CLI: rustls with the `ring` provider (no OpenSSL).
//!
//! Owns: reading PEM certificates, keys and CAs with errors that name the configuration key and the
//! file; this node's certificate, reloaded when its files change ([`Identity`], served to clients and
//! shown to peers as a client certificate); the server's acceptor ([`ServerTls`]: optional mutual
//! TLS, minimum version); the client's configuration ([`ClientTls`]: the CA that checks servers, and
//! with `tls.peer_names` the peer's node id as the name its certificate must show).
//!
//! Never: replaces the peer HMAC signatures (peers need both) or the admin token.
//!
//! Rotation: the certificate and key files are read on every handshake (a few KiB); when either
//! changed, the pair is read again and used from the next handshake on. A pair that does not load
//! (a half-written file, a key that does not match) is logged once and the previous pair stays in
//! use. The CAs are read at start.

use crate::config::NodeConfig;
use crate::toml_file::TomlError;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The crypto provider of every TLS configuration: ring. rustls deprecates it for lacking
/// post-quantum key exchange; the provider that has it (aws-lc-rs) needs cmake and nasm to build.
#[allow(deprecated)]
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The protocol versions from `min_version` ("1.2" or "1.3").
fn versions(min_version: &str) -> &'static [&'static rustls::SupportedProtocolVersion] {
    static ALL: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    if min_version == "1.3" {
        TLS13
    } else {
        ALL
    }
}

/// The certificates of a PEM file (`what` names it in errors).
pub fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    std::fs::metadata(path).map_err(|e| format!("{what}: {}: cannot read: {e}", path.display()))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{what}: {}: not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what}: {}: no certificate in it (expected PEM blocks `-----BEGIN CERTIFICATE-----`)", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    std::fs::metadata(path).map_err(|e| format!("{what}: {}: cannot read: {e}", path.display()))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            format!("{what}: {}: no private key in it (expected a PEM block `-----BEGIN PRIVATE KEY-----`)", path.display())
        }
        e => format!("{what}: {}: not a PEM private key file: {e}", path.display()),
    })
}

/// A CA file as trust roots.
pub fn read_roots(path: &Path, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, what)? {
        roots.add(cert).map_err(|e| format!("{what}: {}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// A certificate chain and its key, read and checked against each other.
fn read_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert, "tls.cert")?;
    let private = read_key(key, "tls.key")?;
    CertifiedKey::from_der(chain, private, &provider()).map(Arc::new).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => {
            format!("tls.key: {}: the key does not match the certificate in {} (tls.cert)", key.display(), cert.display())
        }
        e => format!("tls.key: {}: cannot use the key with {}: {e}", key.display(), cert.display()),
    })
}

/// A file's content: compared rather than its modification time, whose granularity (a clock tick)
/// can hide a rewrite of the same size, and cheap next to a handshake (a few KiB).
type Stamp = Option<Vec<u8>>;

fn stamp(path: &Path) -> Stamp {
    std::fs::read(path).ok()
}

/// This node's certificate and key, reloaded when their files change.
#[derive(Debug)]
pub struct Identity {
    cert: PathBuf,
    key: PathBuf,
    state: Mutex<Loaded>,
}

#[derive(Debug)]
struct Loaded {
    /// The files as they were when `current` was read from them.
    stamps: [Stamp; 2],
    /// The files as they were at the latest attempt (a failed one is not tried again until they change).
    tried: [Stamp; 2],
    current: Arc<CertifiedKey>,
    reloads: u64,
}

impl Identity {
    /// Read the pair; errors name the key and the file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Identity>, String> {
        let stamps = [stamp(cert), stamp(key)];
        let current = read_pair(cert, key)?;
        Ok(Arc::new(Identity {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            state: Mutex::new(Loaded { tried: stamps.clone(), stamps, current, reloads: 0 }),
        }))
    }

    /// The pair to use now: read again if a file changed since.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = [stamp(&self.cert), stamp(&self.key)];
        let mut state = self.state.lock().expect("identity lock");
        if now != state.stamps && now != state.tried {
            state.tried = now.clone();
            match read_pair(&self.cert, &self.key) {
                Ok(pair) => {
                    state.current = pair;
                    state.stamps = now;
                    state.reloads += 1;
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                }
                Err(e) => tracing::warn!(error = %e, "TLS certificate not reloaded; the previous one stays in use"),
            }
        }
        state.current.clone()
    }

    /// How many times the pair was read again since the start.
    pub fn reloads(&self) -> u64 {
        self.state.lock().expect("identity lock").reloads
    }
}

impl ResolvesServerCert for Identity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server side: the acceptor of the HTTPS listener.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub identity: Arc<Identity>,
    /// Clients must show a certificate (`tls.client_ca`).
    pub mutual: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("identity", &self.identity).field("mutual", &self.mutual).finish()
    }
}

/// The node's server TLS and this node's identity, from `[tls]` (`None` without it).
pub fn server(config: &NodeConfig) -> Result<Option<ServerTls>, TomlError> {
    let Some(tls) = &config.tls else { return Ok(None) };
    let err = |message: String| {
        let (key, rest) = message.split_once(": ").unwrap_or(("tls", &message));
        TomlError::at(&config.path, key, rest)
    };
    let identity = Identity::load(&tls.cert, &tls.key).map_err(err)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(&tls.min_version))
        .map_err(|e| err(format!("tls.min_version: {e}")))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = read_roots(ca, "tls.client_ca").map_err(err)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err(format!("tls.client_ca: {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder.with_cert_resolver(identity.clone());
    Ok(Some(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), identity, mutual: tls.client_ca.is_some() }))
}

/// The client side: how to check servers, and which certificate to show them.
#[derive(Clone)]
pub struct ClientTls {
    pub config: Arc<ClientConfig>,
    /// `host:port` → the name its certificate must show instead of the host (`tls.peer_names`).
    pub names: Arc<HashMap<String, String>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("names", &self.names).finish()
    }
}

impl ClientTls {
    /// Servers checked against the CA in `ca`; `identity` shown to servers that ask for a client
    /// certificate.
    pub fn new(ca: &Path, what: &str, identity: Option<Arc<Identity>>, min_version: &str) -> Result<ClientTls, String> {
        let roots = read_roots(ca, what)?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions(min_version))
            .map_err(|e| format!("tls.min_version: {e}"))?
            .with_root_certificates(roots);
        let config = match identity {
            Some(identity) => builder.with_client_cert_resolver(identity),
            None => builder.with_no_client_auth(),
        };
        Ok(ClientTls { config: Arc::new(config), names: Arc::new(HashMap::new()) })
    }

    /// The node's client TLS, from `[tls]` (`None` without `tls.ca`): its CA, its own certificate
    /// as client certificate, and the peers' node ids as names with `tls.peer_names`.
    pub fn for_node(config: &NodeConfig, identity: Option<Arc<Identity>>) -> Result<Option<ClientTls>, TomlError> {
        let Some(tls) = &config.tls else { return Ok(None) };
        let Some(ca) = &tls.ca else { return Ok(None) };
        let mut client = ClientTls::new(ca, "tls.ca", identity, &tls.min_version).map_err(|message| {
            let (key, rest) = message.split_once(": ").unwrap_or(("tls", &message));
            TomlError::at(&config.path, key, rest)
        })?;
        if tls.peer_names {
            for (i, p) in config.peers.iter().enumerate() {
                if ServerName::try_from(p.id.clone()).is_err() {
                    return Err(TomlError::at(
                        &config.path,
                        format!("peer[{i}].id"),
                        format!("{:?} cannot be a DNS name in a certificate, which tls.peer_names needs", p.id),
                    ));
                }
            }
            client.names = Arc::new(config.peer_authorities().into_iter().collect());
        }
        Ok(Some(client))
    }
}

/// Whether `cert` (DER) names `name` in its subject alternative names.
pub fn cert_names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(name) = ServerName::try_from(name) else { return false };
    match rustls::server::ParsedCertificate::try_from(cert) {
        Ok(parsed) => rustls::client::verify_server_name(&parsed, &name).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap().self_signed(&key).unwrap();
        let (c, k) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let missing = dir.path().join("missing.crt");
        let e = Identity::load(&missing, &key).unwrap_err();
        assert!(e.starts_with("tls.cert: ") && e.contains("missing.crt") && e.contains("cannot read"), "{e}");
        std::fs::write(dir.path().join("junk.crt"), "hello\n").unwrap();
        let e = Identity::load(&dir.path().join("junk.crt"), &key).unwrap_err();
        assert!(e.contains("junk.crt") && e.contains("no certificate"), "{e}");
        let e = Identity::load(&cert, &cert).unwrap_err();
        assert!(e.starts_with("tls.key: ") && e.contains("no private key"), "{e}");
        let e = Identity::load(&cert, &other_key).unwrap_err();
        assert!(e.starts_with("tls.key: ") && e.contains("does not match"), "{e}");
        assert!(Identity::load(&cert, &key).is_ok());
    }

    #[test]
    fn a_changed_pair_is_picked_up_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let identity = Identity::load(&cert, &key).unwrap();
        let first = identity.current().cert[0].clone();
        // Half a rotation (a new certificate, the old key): refused, the old pair stays.
        let (b_cert, b_key) = pair(dir.path(), "b");
        std::fs::copy(&b_cert, &cert).unwrap();
        assert_eq!(identity.current().cert[0], first);
        assert_eq!(identity.reloads(), 0);
        std::fs::copy(&b_key, &key).unwrap();
        let second = identity.current().cert[0].clone();
        assert_ne!(second, first);
        assert!(cert_names(&second, "b") && !cert_names(&second, "a"));
        assert_eq!(identity.reloads(), 1);
    }
}
