//! `discovery: { dns: name:port }`: the backends are whatever the name
//! resolves to, re-resolved every `refresh` by the group's background
//! service (never by a delivery). A Kubernetes headless service resolves
//! to its ready pods. A failed lookup keeps the last known backends.

use std::collections::{BTreeSet, HashMap};

use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::Backend;

pub struct DnsDiscovery {
    /// `name:port`.
    pub target: String,
}

#[async_trait::async_trait]
impl ServiceDiscovery for DnsDiscovery {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        let resolved = tokio::net::lookup_host(self.target.as_str())
            .await
            .map_err(|e| {
                tracing::warn!(target = %self.target, error = %e, "upstream DNS lookup failed; keeping the last backends");
                pingora::Error::because(pingora::ErrorType::ConnectNoRoute, "DNS lookup failed", e)
            })?;
        let backends = resolved
            .map(|addr| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(addr),
                weight: 1,
                ext: http::Extensions::new(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_resolves_to_its_addresses_and_a_bad_one_is_an_error() {
        let found = DnsDiscovery {
            target: "localhost:7001".into(),
        }
        .discover()
        .await
        .unwrap()
        .0;
        assert!(found.iter().any(|b| b.addr.to_string() == "127.0.0.1:7001"));
        assert!(DnsDiscovery {
            target: "no-such-host.invalid:7001".into()
        }
        .discover()
        .await
        .is_err());
    }
}
