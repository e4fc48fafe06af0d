//! The floors for webhook ingest: bare Pingora `ServeHttp` apps on one
//! thread, like the sidecar's ingress, that `benches/ingest.sh` measures in
//! the same run as the sidecar.
//!
//! - Without FILE: reads the request body and answers 202; no
//!   verification, no store. What HTTP alone costs.
//! - With FILE (the durable floor): also appends each body, length first,
//!   to FILE and answers only once an `fdatasync` that covers it returned.
//!   One thread writes and syncs for every request waiting at that moment
//!   (group commit), as a store's writer would: the physical limit of a
//!   durable acknowledgement on this machine's disk.
//!
//! Usage: ingest_floor LISTEN_ADDR [FILE]

use std::io::Write;
use std::sync::mpsc;

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;
use tokio::sync::oneshot;

type Append = (BytesMut, oneshot::Sender<std::io::Result<()>>);

struct Accept {
    /// The durable floor's appender; None for the plain floor.
    log: Option<mpsc::Sender<Append>>,
}

#[async_trait]
impl ServeHttp for Accept {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut body = BytesMut::new();
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
        }
        let read = body.len();
        let durable = match &self.log {
            None => true,
            Some(log) => {
                let (done, synced) = oneshot::channel();
                log.send((body, done)).is_ok() && matches!(synced.await, Ok(Ok(())))
            }
        };
        let (status, text) = if durable {
            (202, format!("{{\"status\":\"accepted\",\"bytes\":{read}}}"))
        } else {
            (503, "{\"status\":\"not stored\"}".to_string())
        };
        let text = text.into_bytes();
        http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .header("content-length", text.len())
            .body(text)
            .expect("a static response")
    }
}

/// Appends every body waiting, syncs once, then answers them all.
fn append_and_sync(mut file: std::fs::File, appends: mpsc::Receiver<Append>) {
    let mut batch: Vec<Append> = Vec::new();
    let mut buffer = Vec::new();
    while let Ok(first) = appends.recv() {
        batch.push(first);
        batch.extend(appends.try_iter());
        buffer.clear();
        for (body, _) in &batch {
            buffer.extend_from_slice(&(body.len() as u32).to_le_bytes());
            buffer.extend_from_slice(body);
        }
        let result = file.write_all(&buffer).and_then(|()| file.sync_data());
        for (_, done) in batch.drain(..) {
            let _ = done.send(match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            });
        }
    }
}

pub fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18090".into());
    let log = args.next().map(|path| {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        let (appends, receiver) = mpsc::channel();
        std::thread::spawn(move || append_and_sync(file, receiver));
        appends
    });
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    let mut service = Service::new("ingest floor".to_string(), Accept { log });
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
