//! How the sidecar reaches one provider: its address (resolved in the
//! background-friendly async resolver, cached, never blocking a worker), TLS
//! settings (SNI from the host, an optional private CA) and timeouts.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;

use crate::config::services::UpstreamUrl;

/// Resolved addresses are reused this long; providers move rarely but do move.
const DNS_TTL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS returned no address for {0}")]
    NoAddress(String),
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
}

/// A CA bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("cannot read CA file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("CA file {path} is not valid PEM: {reason}")]
    Pem { path: String, reason: String },
    #[error("CA file {path} holds a certificate that cannot be parsed: {reason}")]
    Certificate { path: String, reason: String },
    #[error("CA file {0} holds no PEM certificate")]
    Empty(String),
}

pub struct UpstreamTarget {
    pub url: UpstreamUrl,
    ca: Option<Arc<CaType>>,
    /// Separates connection pools whose trust settings differ: Pingora's pool
    /// key ignores the CA.
    group_key: u64,
    /// Set when the URL names an IP address: nothing to resolve.
    fixed: Option<SocketAddr>,
    cache: RwLock<Option<(Arc<Vec<SocketAddr>>, Instant)>>,
    next: AtomicUsize,
}

impl UpstreamTarget {
    pub fn new(url: UpstreamUrl, ca_file: Option<&Path>) -> Result<Self, CaError> {
        let (ca, group_key) = match ca_file {
            Some(path) => (Some(load_ca(path)?), hash_path(path)),
            None => (None, 0),
        };
        let fixed = url
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, url.port));
        Ok(Self {
            url,
            ca,
            group_key,
            fixed,
            cache: RwLock::new(None),
            next: AtomicUsize::new(0),
        })
    }

    /// One address of the provider, rotating over what DNS returned.
    pub async fn resolve(&self) -> Result<SocketAddr, ResolveError> {
        if let Some(addr) = self.fixed {
            return Ok(addr);
        }
        let now = Instant::now();
        let cached = self.cache.read().unwrap_or_else(|e| e.into_inner()).clone();
        let addrs = match cached {
            Some((addrs, at)) if now.duration_since(at) < DNS_TTL => addrs,
            stale => {
                let host = (self.url.host.as_str(), self.url.port);
                match tokio::net::lookup_host(host).await {
                    Ok(found) => {
                        let found: Vec<SocketAddr> = found.collect();
                        if found.is_empty() {
                            return Err(ResolveError::NoAddress(self.url.host.clone()));
                        }
                        let found = Arc::new(found);
                        *self.cache.write().unwrap_or_else(|e| e.into_inner()) =
                            Some((Arc::clone(&found), now));
                        found
                    }
                    // A provider whose DNS blips keeps its last known addresses.
                    Err(_) if stale.is_some() => stale.map(|(a, _)| a).unwrap_or_default(),
                    Err(source) => {
                        return Err(ResolveError::Lookup {
                            host: self.url.host.clone(),
                            source,
                        })
                    }
                }
            }
        };
        let index = self.next.fetch_add(1, Ordering::Relaxed) % addrs.len();
        Ok(addrs[index])
    }

    pub fn peer(
        &self,
        addr: SocketAddr,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, self.url.tls, self.url.host.clone());
        peer.group_key = self.group_key;
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(read_timeout);
        peer.options.write_timeout = Some(read_timeout);
        // No idle timeout on pooled connections: the pool already drops a
        // connection as soon as the provider closes it, and a timer per
        // released connection is a measurable share of a proxied request.
        peer.options.ca = self.ca.clone();
        peer
    }
}

pub(crate) fn hash_path(path: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut hasher);
    hasher.finish() | 1
}

/// Every certificate of a PEM bundle, validated before Pingora sees it
/// (Pingora panics on a certificate it cannot parse).
pub fn load_ca(path: &Path) -> Result<Arc<CaType>, CaError> {
    let shown = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: shown(),
        source,
    })?;
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(&pem) {
        let der = item.map_err(|error| CaError::Pem {
            path: shown(),
            reason: error.to_string(),
        })?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| CaError::Certificate {
            path: shown(),
            reason: e.to_string(),
        })?;
        certs.push(WrappedX509::new(
            der.to_vec(),
            pingora::utils::tls::parse_x509,
        ));
    }
    if certs.is_empty() {
        return Err(CaError::Empty(shown()));
    }
    Ok(Arc::from(certs.into_boxed_slice()))
}
