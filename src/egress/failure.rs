//! Turns a Pingora error into the answer the app gets: connect and TLS
//! failures are 502 `upstream_unreachable`, timeouts 504 `upstream_timeout`,
//! a connection that breaks mid-exchange 502 `upstream_failed`.

use pingora::{Error, ErrorSource, ErrorType};

use crate::problem::ErrorCode;

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
