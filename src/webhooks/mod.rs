//! The webhook ingress listener. Until webhooks are configured (a later
//! version verifies, stores and acknowledges them here) every path answers
//! 404 problem+json, and non-POST requests 405.

pub mod event;
pub mod verify;

use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::problem::{ErrorCode, Problem};

pub struct IngressApp;

#[async_trait]
impl ServeHttp for IngressApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let request = session.req_header();
        let path = request.uri.path().to_string();
        if request.method != http::Method::POST {
            return Problem::new(
                ErrorCode::MethodNotAllowed,
                "webhooks are delivered with POST",
            )
            .with_header("allow", "POST")
            .into_http_response();
        }
        Problem::new(
            ErrorCode::NotFound,
            format!("no webhook is configured at {path}"),
        )
        .into_http_response()
    }
}
