//! A small HTTP/1.1 client (hyper-util) with a deadline on every request and a bounded answer.
//!
//! Used by heartbeat probes, peer commands and the CLI's client commands. Connections are pooled per
//! host; a dead peer's pooled connection simply fails the next request. `https://` URLs need a
//! client made [`HttpClient::with_tls`] (the CA that checks the server, see [`crate::tls`]); a
//! refused certificate fails the request with rustls's reason.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper::{Method, Request};
use hyper_rustls::{DefaultServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Largest answer body read: a replication page (4 MiB of values, base64) plus one file of the
/// largest size a replicated directory allows (16 MiB, base64), with room to spare.
pub const MAX_ANSWER: usize = 48 << 20;

/// An answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A pooled HTTP client.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    tls: bool,
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClient {
    /// A client for `http://` URLs only.
    pub fn new() -> HttpClient {
        Self::with_tls(None)
    }

    /// A client for `http://` and, with `tls`, `https://` URLs.
    pub fn with_tls(tls: Option<&crate::tls::ClientTls>) -> HttpClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.enforce_http(false);
        let config = match tls {
            Some(t) => (*t.config).clone(),
            // Never used: `send` refuses https:// URLs without TLS settings.
            None => rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default versions")
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        };
        let names = tls.map(|t| t.names.clone()).unwrap_or_default();
        let resolver = move |uri: &hyper::Uri| -> Result<rustls_pki_types::ServerName<'static>, Box<dyn std::error::Error + Send + Sync>> {
            match uri.authority().and_then(|a| names.get(a.as_str())) {
                Some(name) => rustls_pki_types::ServerName::try_from(name.clone()).map_err(|e| e.into()),
                None => DefaultServerNameResolver::default().resolve(uri),
            }
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .with_server_name_resolver(resolver)
            .enable_http1()
            .wrap_connector(connector);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(4)
            .build(https);
        HttpClient { inner, tls: tls.is_some() }
    }

    /// Send a request; the whole exchange (connect, send, read the answer) ends by `timeout`.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, String> {
        if !self.tls && url.starts_with("https://") {
            return Err(format!("{url}: an https:// URL needs the CA that signed the server's certificate (tls.ca, or --ca)"));
        }
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        let request = builder.body(Full::new(body)).map_err(|e| format!("{url}: bad request: {e}"))?;
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| describe(url, &e))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("{url}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer { status: parts.status.as_u16(), headers: parts.headers, body })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
    }

    /// `GET url`.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<Answer, String> {
        self.send(Method::GET, url, &[], Bytes::new(), timeout).await
    }
}

fn describe(url: &str, e: &hyper_util::client::legacy::Error) -> String {
    use std::error::Error;
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    format!("{url}: {text}")
}
