//! TLS to Redis nodes (rustls with the *ring* provider).
//!
//! Certificates are always verified against `ca_file` (or the system
//! bundle); the name checked is `sni` if set, else the node's own host, so a
//! cluster addressed by IP needs IP SANs — as `redis-cli --tls` requires too.

use crate::config::TlsConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use std::sync::Arc;

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A cluster's TLS client configuration, loaded once.
pub struct TlsSettings {
    config: Arc<ClientConfig>,
    sni: Option<String>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("sni", &self.sni)
            .finish()
    }
}

impl TlsSettings {
    /// Read the CA bundle and optional client certificate and key.
    pub fn load(t: &TlsConfig) -> Result<TlsSettings, String> {
        let ca = t.ca_file.as_deref().unwrap_or(SYSTEM_BUNDLE);
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca).map_err(|e| format!("ca_file {ca}: {e}"))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("ca_file {ca}: {e}"))?;
            roots.add(cert).map_err(|e| format!("ca_file {ca}: {e}"))?;
        }
        if roots.is_empty() {
            return Err(format!("ca_file {ca}: no certificate found"));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (&t.cert_file, &t.key_file) {
            (Some(cert), Some(key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .map_err(|e| format!("cert_file {cert}: {e}"))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cert_file {cert}: {e}"))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("key_file {key}: {e}"))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("cert_file/key_file: {e}"))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(TlsSettings {
            config: Arc::new(config),
            sni: t.sni.clone(),
        })
    }

    /// A client session for the node at `addr` ("host:port").
    pub fn session(&self, addr: &str) -> Result<ClientConnection, String> {
        let host = match &self.sni {
            Some(s) => s.clone(),
            None => {
                let (h, _) = crate::topology::split_host_port(addr)?;
                h.trim_start_matches('[').trim_end_matches(']').to_string()
            }
        };
        let name =
            ServerName::try_from(host.clone()).map_err(|e| format!("server name {host}: {e}"))?;
        ClientConnection::new(self.config.clone(), name).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_or_empty_ca_is_an_error() {
        let t = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        assert!(TlsSettings::load(&t).unwrap_err().contains("ca_file"));
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let t = TlsConfig {
            ca_file: Some(empty.to_string_lossy().into()),
            ..TlsConfig::default()
        };
        assert!(TlsSettings::load(&t).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn system_bundle_loads_and_names_parse() {
        if !std::path::Path::new(SYSTEM_BUNDLE).exists() {
            return;
        }
        let s = TlsSettings::load(&TlsConfig::default()).unwrap();
        assert!(s.session("127.0.0.1:6379").is_ok());
        assert!(s.session("redis-0.redis:6379").is_ok());
        assert!(s.session("[::1]:6379").is_ok());
    }
}
