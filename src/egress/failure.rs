//! Turns a Pingora error into the answer the app gets: connect and TLS
//! failures are 502 `upstream_unreachable`, timeouts 504 `upstream_timeout`,
//! a connection that breaks mid-exchange 502 `upstream_failed`.

use std::time::Duration;

use pingora::{Error, ErrorSource, ErrorType};

use crate::config::units::format_duration;
use crate::problem::{ErrorCode, Problem};

/// The answer for `error` in an exchange with `service` (whose `timeout`
/// bounded it); None when the client went away and nobody is left to
/// answer. Every failure text the egress sends is made here.
pub fn problem_for(error: &Error, service: &str, timeout: Duration) -> Option<Problem> {
    let code = classify(error)?;
    let detail = match code {
        // Our own failures (DNS, say) carry the reason as context;
        // Pingora's connect errors are told by their type.
        ErrorCode::UpstreamUnreachable => match &error.context {
            Some(reason) if error.etype() == &ErrorType::ConnectNoRoute => {
                format!("cannot reach {service}: {}", reason.as_str())
            }
            _ => format!("cannot reach {service}: {}", error.etype().as_str()),
        },
        ErrorCode::UpstreamTimeout => {
            format!(
                "{service} did not answer within {}",
                format_duration(timeout)
            )
        }
        ErrorCode::UpstreamFailed => format!(
            "the connection to {service} failed: {}",
            error.etype().as_str()
        ),
        ErrorCode::BadRequest => {
            format!("the request could not be read: {}", error.etype().as_str())
        }
        _ => "the sidecar failed to proxy this request".to_string(),
    };
    Some(Problem::new(code, detail))
}

/// None when the client itself went away and nobody is left to answer.
pub fn classify(error: &Error) -> Option<ErrorCode> {
    use ErrorType::*;
    match error.etype() {
        ConnectTimedout | ConnectRefused | ConnectNoRoute | TLSHandshakeFailure
        | TLSHandshakeTimedout | InvalidCert | HandshakeError | ConnectError
        | ConnectProxyFailure | BindError | SocketError => Some(ErrorCode::UpstreamUnreachable),
        ReadTimedout | WriteTimedout => match error.esource() {
            ErrorSource::Downstream => None,
            _ => Some(ErrorCode::UpstreamTimeout),
        },
        _ => match error.esource() {
            ErrorSource::Upstream => Some(ErrorCode::UpstreamFailed),
            ErrorSource::Downstream => match error.etype() {
                ReadError | WriteError | ConnectionClosed => None,
                _ => Some(ErrorCode::BadRequest),
            },
            ErrorSource::Internal | ErrorSource::Unset => Some(ErrorCode::Internal),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_text_names_the_service_and_the_cause() {
        let timeout = Duration::from_secs(30);
        let text = |error: Error| problem_for(&error, "stripe", timeout).unwrap().detail;
        assert_eq!(
            text(*Error::new_up(ErrorType::ConnectRefused)),
            "cannot reach stripe: ConnectRefused"
        );
        assert_eq!(
            text(*Error::new_up(ErrorType::ReadTimedout)),
            "stripe did not answer within 30s"
        );
        let mut dns = Error::explain(ErrorType::ConnectNoRoute, "no address for api.stripe.com");
        dns.esource = ErrorSource::Upstream;
        assert_eq!(
            text(*dns),
            "cannot reach stripe: no address for api.stripe.com"
        );
        assert!(problem_for(
            &Error::new_down(ErrorType::ConnectionClosed),
            "stripe",
            timeout
        )
        .is_none());
    }

    #[test]
    fn maps_connect_timeout_and_broken_exchanges() {
        assert_eq!(
            classify(&Error::new_up(ErrorType::ConnectRefused)),
            Some(ErrorCode::UpstreamUnreachable)
        );
        assert_eq!(
            classify(&Error::new_up(ErrorType::TLSHandshakeFailure)),
            Some(ErrorCode::UpstreamUnreachable)
        );
        assert_eq!(
            classify(&Error::new_up(ErrorType::ConnectTimedout)),
            Some(ErrorCode::UpstreamUnreachable)
        );
        assert_eq!(
            classify(&Error::new_up(ErrorType::ReadTimedout)),
            Some(ErrorCode::UpstreamTimeout)
        );
        assert_eq!(
            classify(&Error::new_up(ErrorType::ConnectionClosed)),
            Some(ErrorCode::UpstreamFailed)
        );
        assert_eq!(
            classify(&Error::new_down(ErrorType::ConnectionClosed)),
            None
        );
        assert_eq!(
            classify(&Error::new_down(ErrorType::InvalidHTTPHeader)),
            Some(ErrorCode::BadRequest)
        );
    }
}
