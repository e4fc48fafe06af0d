//! A deadline for a whole exchange on one upstream connection.
//!
//! Pingora's HTTP/1 client restarts its read timeout with every read, so an
//! upstream that sends its status line and headers a byte a second, or a
//! `100 Continue` every half second, holds an exchange open for as long as
//! it likes; nothing in Pingora's proxy flow bounds the time until the
//! headers are complete. A [`Cutoff`] shuts the connection's socket down
//! once the exchange's time is up: whatever read or write is under way
//! fails at once, wherever Pingora is in the exchange, and the caller asks
//! [`Cutoff::fired`] to tell that failure from the upstream's own.
//!
//! The socket is known by the descriptor Pingora hands over and by its
//! kernel cookie (`SO_COOKIE`, unique per socket until reboot): Pingora may
//! close its descriptor (a connection it will not reuse) before the caller
//! hears of the failure, and the number could by then belong to another
//! connection, which the cookie tells apart. (A duplicate descriptor would
//! be airtight, but taking one from a raw number needs `unsafe`, which the
//! crate forbids; the window left is the two system calls of `fire`, and
//! only for an exchange that failed on its own at its deadline's instant.)

//!
//! The cutoffs of all exchanges are watched by one task ([`Cutoffs`]),
//! which looks every [`SWEEP_EVERY`] while any is armed: a timer task per
//! attempt cost more than a tenth of a proxied request's instructions. A
//! cutoff fires up to that much after its deadline; a silent upstream is
//! still cut at the deadline itself by the per-read timeout.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::protocols::l4::ext::get_socket_cookie;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often the armed cutoffs are looked at, and so how late one may fire.
pub const SWEEP_EVERY: Duration = Duration::from_millis(50);

/// The armed cutoffs of one proxy, and the task that fires them.
#[derive(Default)]
pub struct Cutoffs {
    armed: Mutex<Vec<(Instant, Arc<Shared>)>>,
    /// Wakes the task when the first cutoff is armed after none were.
    armed_again: Notify,
    watching: AtomicBool,
}

/// Armed for one attempt; disarmed (or dropped) when the answer was read
/// whole, before the connection can go back to the pool.
pub struct Cutoff {
    shared: Arc<Shared>,
}

struct Shared {
    /// Taken by whoever comes first: the sweep (to shut the socket down)
    /// or `disarm` (to leave it alone).
    socket: Mutex<Option<Socket>>,
    fired: AtomicBool,
}

#[derive(Clone, Copy)]
struct Socket {
    fd: RawFd,
    cookie: u64,
}

impl Cutoffs {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Shuts the socket of `fd` down `after` from now (up to
    /// [`SWEEP_EVERY`] later) unless disarmed first. Needs a Tokio runtime
    /// that lasts (the first call starts the watching task on it); `fd`
    /// must be open (Pingora's, for the callback that received it).
    pub fn arm(self: &Arc<Self>, fd: RawFd, after: Duration) -> io::Result<Cutoff> {
        let shared = Arc::new(Shared {
            socket: Mutex::new(Some(Socket {
                fd,
                cookie: get_socket_cookie(fd)?,
            })),
            fired: AtomicBool::new(false),
        });
        let was_empty = {
            let mut armed = lock(&self.armed);
            armed.push((Instant::now() + after, Arc::clone(&shared)));
            armed.len() == 1
        };
        if !self.watching.swap(true, Ordering::AcqRel) {
            tokio::spawn(Arc::clone(self).watch());
        } else if was_empty {
            self.armed_again.notify_one();
        }
        Ok(Cutoff { shared })
    }

    async fn watch(self: Arc<Self>) {
        loop {
            if self.sweep(Instant::now()) {
                tokio::time::sleep(SWEEP_EVERY).await;
            } else {
                // Nothing armed: no wake-ups until something is.
                self.armed_again.notified().await;
            }
        }
    }

    /// Fires the cutoffs whose deadline passed by `now` and forgets the
    /// disarmed ones; whether any are still armed.
    fn sweep(&self, now: Instant) -> bool {
        let mut armed = lock(&self.armed);
        armed.retain(|(at, shared)| {
            if *at <= now {
                shared.fire();
                return false;
            }
            lock(&shared.socket).is_some()
        });
        !armed.is_empty()
    }
}

impl Cutoff {
    /// Whether the deadline passed and the socket was shut down.
    pub fn fired(&self) -> bool {
        self.shared.fired.load(Ordering::Acquire)
    }

    /// The exchange ended in time: the socket is never touched from here on.
    pub fn disarm(&self) {
        self.shared.take();
    }
}

impl Drop for Cutoff {
    fn drop(&mut self) {
        self.disarm();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn take(&self) -> Option<Socket> {
        lock(&self.socket).take()
    }

    fn fire(&self) {
        // A `disarm` that returned first left nothing to shut down, so a
        // connection back in the pool is never touched.
        let Some(socket) = self.take() else { return };
        if get_socket_cookie(socket.fd).ok() != Some(socket.cookie) {
            // Closed already (the exchange failed on its own); the number
            // may be another connection's now.
            return;
        }
        // Marked before the shutdown, so that the failure it causes always
        // finds it marked.
        self.fired.store(true, Ordering::Release);
        if let Err(error) = nix::sys::socket::shutdown(socket.fd, nix::sys::socket::Shutdown::Both)
        {
            tracing::debug!(%error, "cannot shut down a connection past its deadline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_that_outlives_the_deadline_ends_when_it_passes() {
        let (mut client, mut server) = pair().await;
        let cutoffs = Cutoffs::new();
        let cutoff = cutoffs
            .arm(client.as_raw_fd(), Duration::from_secs(3))
            .unwrap();
        // The upstream trickles: every read gets a byte, none times out.
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if server.write_all(b"H").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let started = tokio::time::Instant::now();
        let mut buffer = [0u8; 16];
        let mut read = 0;
        while client
            .read(&mut buffer)
            .await
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            read += 1;
        }
        assert!(cutoff.fired());
        let late = started.elapsed() - Duration::from_secs(3);
        assert!(late <= SWEEP_EVERY, "{late:?} late");
        assert!(read >= 1, "the upstream's bytes were read until the cut");
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_disarmed_cutoff_leaves_the_connection_alone() {
        let (mut client, mut server) = pair().await;
        let cutoffs = Cutoffs::new();
        let cutoff = cutoffs
            .arm(client.as_raw_fd(), Duration::from_secs(1))
            .unwrap();
        cutoff.disarm();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!cutoff.fired());
        // Forgotten, and the task asleep until another is armed.
        assert!(!cutoffs.sweep(Instant::now()));
        server.write_all(b"still open").await.unwrap();
        let mut buffer = [0u8; 10];
        client.read_exact(&mut buffer).await.unwrap();
        assert_eq!(&buffer, b"still open");
    }

    #[tokio::test(start_paused = true)]
    async fn a_descriptor_closed_and_reused_before_the_deadline_is_left_alone() {
        let (client, mut server) = pair().await;
        let fd = client.as_raw_fd();
        let cutoffs = Cutoffs::new();
        let cutoff = cutoffs.arm(fd, Duration::from_secs(1)).unwrap();
        // Pingora closed its connection and another one got the number:
        // dup2 does both at once, where the kernel's choice of the lowest
        // free number would race with every other test's sockets.
        let (mut other, mut other_server) = pair().await;
        let mut number: std::os::fd::OwnedFd = client.into_std().unwrap().into();
        nix::unistd::dup2(&other, &mut number).unwrap();
        assert_eq!(number.as_raw_fd(), fd);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!cutoff.fired());
        other_server.write_all(b"ok").await.unwrap();
        let mut buffer = [0u8; 2];
        other.read_exact(&mut buffer).await.unwrap();
        let mut rest = Vec::new();
        assert_eq!(server.read_to_end(&mut rest).await.unwrap(), 0);
    }
}
