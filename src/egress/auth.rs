//! Credential injection. The app's own credentials are removed first, so a
//! provider only ever sees the sidecar's. Header values are built once at
//! startup and marked sensitive; nothing here logs.

use super::headers::set_request;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::config::private_key::RsaPrivateKey;
use crate::config::services::{ApiKeyPlacement, Auth};
use crate::time::unix_time;

/// A service's static credentials, ready to put on a request.
pub enum PreparedAuth {
    None,
    /// Bearer or basic: a complete `Authorization` value.
    Authorization(HeaderValue),
    ApiKeyHeader(HeaderName, HeaderValue),
    ApiKeyQuery {
        name: String,
        encoded_value: String,
    },
    /// The bearer token comes from the service's token source per request.
    OAuth2,
    /// A GitHub App's JWT, minted for each request (an RSA signature:
    /// about a millisecond, fine for an API called a few times a run).
    GithubApp {
        app_id: String,
        key: RsaPrivateKey,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential contains characters not allowed in an HTTP header")]
    NotHeaderSafe,
    #[error("invalid header name {0}")]
    HeaderName(String),
}

impl PreparedAuth {
    pub fn new(auth: Option<&Auth>) -> Result<Self, CredentialError> {
        let sensitive = |value: String| {
            HeaderValue::try_from(value)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| CredentialError::NotHeaderSafe)
        };
        Ok(match auth {
            None => Self::None,
            Some(Auth::Bearer { token }) => {
                Self::Authorization(sensitive(format!("Bearer {}", token.expose()))?)
            }
            Some(Auth::Basic { username, password }) => {
                let pair = format!("{username}:{}", password.expose());
                Self::Authorization(sensitive(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ))?)
            }
            Some(Auth::ApiKey {
                placement: ApiKeyPlacement::Header(name),
                value,
            }) => {
                let name = HeaderName::try_from(name.as_str())
                    .map_err(|_| CredentialError::HeaderName(name.clone()))?;
                Self::ApiKeyHeader(name, sensitive(value.expose().to_string())?)
            }
            Some(Auth::ApiKey {
                placement: ApiKeyPlacement::Query(name),
                value,
            }) => Self::ApiKeyQuery {
                name: name.clone(),
                encoded_value: form_urlencoded::byte_serialize(value.expose().as_bytes()).collect(),
            },
            Some(Auth::OAuth2(_)) => Self::OAuth2,
            Some(Auth::GithubApp {
                app_id,
                private_key,
            }) => Self::GithubApp {
                app_id: app_id.clone(),
                key: private_key.clone(),
            },
        })
    }

    /// Removes what the app sent in the credential's place, then injects ours.
    /// `oauth2_token` is the current access token for `OAuth2` services.
    pub fn apply(
        &self,
        request: &mut RequestHeader,
        oauth2_token: Option<&str>,
    ) -> pingora::Result<()> {
        match self {
            Self::None => {}
            Self::Authorization(value) => {
                set_request(request, http::header::AUTHORIZATION, value.clone())?;
            }
            Self::ApiKeyHeader(name, value) => {
                request.remove_header(&http::header::AUTHORIZATION);
                set_request(request, name.clone(), value.clone())?;
            }
            Self::ApiKeyQuery {
                name,
                encoded_value,
            } => {
                request.remove_header(&http::header::AUTHORIZATION);
                let path = request.uri.path().to_string();
                let query = replace_query_param(request.uri.query(), name, encoded_value);
                let uri = http::Uri::builder()
                    .path_and_query(format!("{path}?{query}"))
                    .build()
                    .map_err(|e| {
                        pingora::Error::because(
                            pingora::ErrorType::InternalError,
                            "building the upstream URI",
                            e,
                        )
                    })?;
                request.set_uri(uri);
            }
            Self::OAuth2 => {
                let token = oauth2_token.unwrap_or_default();
                set_bearer(request, token, "access token is not a valid header value")?;
            }
            Self::GithubApp { app_id, key } => {
                let jwt = crate::signing::jwt::github_app(app_id, key.key(), unix_time().as_secs())
                    .map_err(|e| {
                        pingora::Error::because(pingora::ErrorType::InternalError, "minting", e)
                    })?;
                set_bearer(request, &jwt, "a JWT header")?;
            }
        }
        Ok(())
    }
}

/// `Authorization: Bearer <token>` for a token made per request (an
/// access token, a JWT), marked sensitive; `what` names it in the error.
fn set_bearer(request: &mut RequestHeader, token: &str, what: &'static str) -> pingora::Result<()> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|e| pingora::Error::because(pingora::ErrorType::InternalError, what, e))?;
    value.set_sensitive(true);
    set_request(request, http::header::AUTHORIZATION, value)
}

/// The query without any `name=` pair the app sent, plus ours at the end.
pub fn replace_query_param(query: Option<&str>, name: &str, encoded_value: &str) -> String {
    let encoded_name: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
    let mut kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .map(|(k, _)| k.into_owned())
                .next()
                .unwrap_or_default();
            decoded != name
        })
        .collect();
    let ours = format!("{encoded_name}={encoded_value}");
    kept.push(&ours);
    kept.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn request(uri: &str) -> RequestHeader {
        let mut req = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        req.insert_header("authorization", "Bearer app-own")
            .unwrap();
        req
    }

    #[test]
    fn bearer_replaces_the_apps_authorization() {
        let auth = PreparedAuth::new(Some(&Auth::Bearer {
            token: Secret::new("sk_test"),
        }))
        .unwrap();
        let mut req = request("/v1/x");
        auth.apply(&mut req, None).unwrap();
        assert_eq!(
            req.headers
                .get_all("authorization")
                .iter()
                .collect::<Vec<_>>(),
            ["Bearer sk_test"]
        );
    }

    #[test]
    fn a_github_app_gets_a_fresh_jwt_in_place_of_the_apps_authorization() {
        let key =
            RsaPrivateKey::from_pem(include_str!("../../tests/fixtures/github_app_test_key.pem"))
                .unwrap();
        let auth = PreparedAuth::new(Some(&Auth::GithubApp {
            app_id: "42".into(),
            private_key: key,
        }))
        .unwrap();
        let mut req = request("/app/hook/deliveries");
        req.insert_header("authorization", "token ghp_apps_own")
            .unwrap();
        auth.apply(&mut req, None).unwrap();
        let values: Vec<_> = req.headers.get_all("authorization").iter().collect();
        assert_eq!(values.len(), 1);
        assert!(values[0].is_sensitive());
        let jwt = values[0].to_str().unwrap().strip_prefix("Bearer ").unwrap();
        assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    }

    #[test]
    fn basic_encodes_username_and_password() {
        let auth = PreparedAuth::new(Some(&Auth::Basic {
            username: "AC123".into(),
            password: Secret::new("tok"),
        }))
        .unwrap();
        let mut req = request("/");
        auth.apply(&mut req, None).unwrap();
        assert_eq!(req.headers["authorization"], "Basic QUMxMjM6dG9r");
    }

    #[test]
    fn api_key_header_replaces_the_apps_header_and_drops_authorization() {
        let auth = PreparedAuth::new(Some(&Auth::ApiKey {
            placement: ApiKeyPlacement::Header("X-Api-Key".into()),
            value: Secret::new("k1"),
        }))
        .unwrap();
        let mut req = request("/");
        req.insert_header("x-api-key", "app-key").unwrap();
        auth.apply(&mut req, None).unwrap();
        assert_eq!(
            req.headers.get_all("x-api-key").iter().collect::<Vec<_>>(),
            ["k1"]
        );
        assert!(req.headers.get("authorization").is_none());
    }

    #[test]
    fn api_key_query_replaces_the_apps_parameter_and_keeps_the_rest() {
        let auth = PreparedAuth::new(Some(&Auth::ApiKey {
            placement: ApiKeyPlacement::Query("api_key".into()),
            value: Secret::new("k 1&"),
        }))
        .unwrap();
        let mut req = request("/search?q=flowers&api_key=app&api%5Fkey=app2&page=2");
        auth.apply(&mut req, None).unwrap();
        assert_eq!(
            req.uri.to_string(),
            "/search?q=flowers&page=2&api_key=k+1%26"
        );
        let mut req = request("/search");
        auth.apply(&mut req, None).unwrap();
        assert_eq!(req.uri.to_string(), "/search?api_key=k+1%26");
    }

    #[test]
    fn oauth2_uses_the_token_given_per_request() {
        let mut req = request("/");
        PreparedAuth::OAuth2.apply(&mut req, Some("at-42")).unwrap();
        assert_eq!(req.headers["authorization"], "Bearer at-42");
    }

    #[test]
    fn without_auth_the_apps_credentials_pass_through() {
        let mut req = request("/");
        PreparedAuth::None.apply(&mut req, None).unwrap();
        assert_eq!(req.headers["authorization"], "Bearer app-own");
    }
}
