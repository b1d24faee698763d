//! Certificates for the TLS tests and benchmark (`rcgen`): a small CA, node certificates naming a
//! node id and an address, expired ones, and the `[tls]` table of a node using them.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vigil::http_client::HttpClient;
use vigil::tls::{ClientTls, Identity};

/// A certificate authority whose CA certificate is in `dir/NAME.crt`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert: PathBuf,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 1975 to 4096 (rcgen's default).
    Now,
    /// During 2020 only.
    Expired,
}

impl Ca {
    /// A new CA, its certificate written to `dir/NAME.crt`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("{name} (vigil test CA)"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).expect("CA certificate");
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, cert.pem()).expect("write the CA certificate");
        Ca { issuer: Issuer::new(params, key), cert: path }
    }

    /// A certificate for `names` (DNS names or IP addresses) and its key, as PEM.
    pub fn issue(&self, names: &[&str], validity: Validity) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("vigil"));
        if validity == Validity::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// [`Ca::issue`] written to `dir/STEM.crt` and `dir/STEM.key`.
    pub fn write(&self, dir: &Path, stem: &str, names: &[&str], validity: Validity) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names, validity);
        let (cert_path, key_path) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        std::fs::write(&cert_path, cert).expect("write the certificate");
        std::fs::write(&key_path, key).expect("write the key");
        (cert_path, key_path)
    }
}

/// The `[tls]` table of a node with this certificate, checking servers against `ca` and (mutual
/// TLS) requiring client certificates signed by it; `rest` adds lines (`peer_names = true`, …).
pub fn tls_table(cert: &Path, key: &Path, ca: &Path, rest: &str) -> String {
    format!(
        "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{ca}\"\nclient_ca = \"{ca}\"\n{rest}\n",
        cert.display(),
        key.display(),
        ca = ca.display()
    )
}

/// An HTTP client that checks servers against `ca` and shows `identity` (a certificate and key).
pub fn client(ca: &Path, identity: Option<(&Path, &Path)>) -> HttpClient {
    let identity: Option<Arc<Identity>> = identity.map(|(c, k)| Identity::load(c, k).expect("client certificate"));
    HttpClient::with_tls(Some(&ClientTls::new(ca, "ca", identity, "1.2").expect("client TLS")))
}
