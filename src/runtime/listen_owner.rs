//! Whether a listening TCP socket belongs to this process. A successful
//! connect only says that someone listens on an address; between the start-up
//! bind check and Pingora's own bind another process can take the port, and
//! then the connect reaches it instead of us. On Linux the kernel's socket
//! table says whose socket it is; elsewhere the answer is unknown.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// `Some(true)` when one of this process's sockets listens on `addr`,
/// `Some(false)` when none does, `None` when the system cannot tell (no
/// `/proc`).
pub fn held_by_this_process(addr: SocketAddr) -> Option<bool> {
    let ours = own_socket_inodes()?;
    let table = match addr {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    Some(
        listening_inodes(&text, addr)
            .iter()
            .any(|inode| ours.contains(inode)),
    )
}

/// Inodes of the sockets among this process's open descriptors.
fn own_socket_inodes() -> Option<HashSet<u64>> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(
        entries
            .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
            .filter_map(|target| socket_inode(&target.to_string_lossy()))
            .collect(),
    )
}

/// `socket:[12345]` is how `/proc/self/fd` names a socket.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The inodes of the sockets in a `/proc/net/tcp{,6}` table that listen on
/// `addr`.
fn listening_inodes(table: &str, addr: SocketAddr) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            (*state == LISTEN && parse_local_address(local)? == addr)
                .then(|| inode.parse().ok())
                .flatten()
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6). The kernel
/// prints the address as 32-bit words in host byte order and the port as a
/// number.
fn parse_local_address(text: &str) -> Option<SocketAddr> {
    let (address, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = address
        .as_bytes()
        .chunks(8)
        .map(|chunk| u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok())
        .collect::<Option<Vec<u32>>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listener_of_this_process_is_recognised_and_a_closed_one_is_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if held_by_this_process(addr).is_none() {
            return; // no /proc here: nothing to check against
        }
        assert_eq!(held_by_this_process(addr), Some(true));
        drop(listener);
        assert_eq!(held_by_this_process(addr), Some(false));
    }

    #[test]
    fn a_listener_of_another_process_is_not_ours() {
        // The table lists sockets of every process; only the inode says whose.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   \
            1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        if cfg!(target_endian = "little") {
            // Only the listening row counts, not an established connection.
            assert_eq!(listening_inodes(table, addr), vec![4242]);
        }
        assert!(listening_inodes(table, "127.0.0.1:8081".parse().unwrap()).is_empty());
    }

    #[test]
    fn ipv6_and_wildcard_addresses_parse() {
        if cfg!(target_endian = "little") {
            assert_eq!(
                parse_local_address("00000000000000000000000001000000:0050"),
                Some("[::1]:80".parse().unwrap())
            );
            assert_eq!(
                parse_local_address("00000000:0050"),
                Some("0.0.0.0:80".parse().unwrap())
            );
        }
        assert_eq!(parse_local_address("zz:0050"), None);
        assert_eq!(socket_inode("socket:[77]"), Some(77));
        assert_eq!(socket_inode("pipe:[77]"), None);
    }
}
