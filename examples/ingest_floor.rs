//! The floor for webhook ingest: a bare Pingora `ServeHttp` app that reads
//! the request body and answers 202, with no verification and no store, on
//! one thread like the sidecar's ingress. `benches/ingest.sh` measures it in
//! the same run as the sidecar.
//! Usage: ingest_floor LISTEN_ADDR

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::services::listening::Service;

struct Accept;

#[async_trait]
impl ServeHttp for Accept {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let mut read = 0usize;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            read += chunk.len();
        }
        let body = format!("{{\"status\":\"accepted\",\"bytes\":{read}}}").into_bytes();
        http::Response::builder()
            .status(202)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .expect("a static response")
    }
}

pub fn main() {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18090".into());
    let mut server = Server::new_with_opt_and_conf(
        None,
        ServerConf {
            threads: 1,
            ..ServerConf::default()
        },
    );
    let mut service = Service::new("ingest floor".to_string(), Accept);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever();
}
