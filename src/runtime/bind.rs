//! The listen addresses, settled before Pingora binds. Pingora binds inside
//! its service threads, panics there on failure, and keys its table of
//! listening sockets by the address text, so three listeners on
//! `127.0.0.1:0` would share one socket. Here a fixed port is checked free
//! (one clear error instead of a panic), and port 0 gets a port from the
//! kernel that this process holds until Pingora's listener is up: a socket
//! bound with `SO_REUSEPORT` but never listening receives no connection, and
//! Pingora's listener, also `SO_REUSEPORT`, may bind beside it. No other
//! process can take the port in between, so a test that asks for port 0
//! never races.

use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Protocol, Socket, Type};

/// A listen address this process cannot have.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({role} listener): {source}")]
pub struct BindError {
    pub role: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// One listener's settled address.
#[derive(Debug)]
pub struct Settled {
    pub role: &'static str,
    /// The address Pingora binds, never port 0.
    pub addr: SocketAddr,
    /// The port came from the kernel: Pingora must bind with
    /// `SO_REUSEPORT` beside the reservation.
    pub reserved: Option<Socket>,
}

impl Settled {
    pub fn reuse_port(&self) -> bool {
        self.reserved.is_some()
    }
}

/// Settles `addr` for the `role` listener.
pub fn settle(role: &'static str, addr: SocketAddr) -> Result<Settled, BindError> {
    let bind_error = |source| BindError { role, addr, source };
    if addr.port() != 0 {
        TcpListener::bind(addr).map_err(bind_error)?;
        return Ok(Settled {
            role,
            addr,
            reserved: None,
        });
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    socket.set_reuse_port(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    let bound = socket
        .local_addr()
        .map_err(bind_error)?
        .as_socket()
        .ok_or_else(|| bind_error(std::io::Error::other("not an IP socket")))?;
    Ok(Settled {
        role,
        addr: bound,
        reserved: Some(socket),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_held_and_another_process_cannot_bind_it() {
        let settled = settle("egress", "127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(settled.addr.port(), 0);
        assert!(settled.reuse_port());
        // A plain bind (what another program does) fails while held.
        assert!(TcpListener::bind(settled.addr).is_err());
        // Pingora's listener binds beside it with SO_REUSEPORT and listens.
        let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        listener.set_reuse_port(true).unwrap();
        listener.bind(&settled.addr.into()).unwrap();
        listener.listen(16).unwrap();
        // The reservation never listens, so every connection reaches Pingora's.
        drop(settled);
        std::net::TcpStream::connect(listener.local_addr().unwrap().as_socket().unwrap()).unwrap();
    }

    #[test]
    fn three_port_zero_listeners_get_three_ports() {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let held: Vec<Settled> = (0..3).map(|_| settle("x", any).unwrap()).collect();
        let ports: std::collections::HashSet<u16> = held.iter().map(|s| s.addr.port()).collect();
        assert_eq!(ports.len(), 3);
    }

    #[test]
    fn a_taken_fixed_port_is_a_bind_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let error = settle("ingress", taken.local_addr().unwrap()).unwrap_err();
        assert!(error.to_string().contains("ingress listener"), "{error}");
    }
}
