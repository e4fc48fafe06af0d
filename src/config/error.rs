//! Configuration errors: each names the YAML path and, where the parser knows
//! it, the line and column. Rendered as one line each for the CLI.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
    pub location: Option<Location>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let Some(loc) = self.location {
            write!(f, " (line {}, column {})", loc.line, loc.column)?;
        }
        Ok(())
    }
}

/// Every error found in one configuration file, in document order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.errors.len();
        write!(
            f,
            "{}: {count} configuration error{}",
            self.file,
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.errors {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Why one value cannot be used, with the value as written; the decoder
/// pins it to its key (and names `${...}` references, never what they hold).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid duration \"{0}\": expected a number followed by ms, s, m, h or d (e.g. 250ms, 30s, 1h30m)")]
    Duration(String),
    #[error("invalid size \"{0}\": expected a number of bytes, optionally with B, KB, KiB, MB, MiB, GB or GiB (e.g. 1MiB)")]
    Size(String),
    #[error(
        "invalid percentage \"{0}\": expected a number from 0 to 100 followed by % (e.g. 50%)"
    )]
    Percent(String),
    #[error("invalid path \"{0}\": it must start with /")]
    PathNotAbsolute(String),
    #[error("invalid path \"{0}\": a fragment (#) is never sent to a server")]
    PathFragment(String),
    #[error("invalid path \"{0}\": only characters allowed in a URL path may appear (percent-encode others, e.g. %20 for a space)")]
    PathCharacters(String),
    #[error("invalid path \"{0}\": a query string is not allowed here")]
    PathQuery(String),
    #[error("invalid header value \"{0}\": use visible ASCII characters")]
    HeaderValue(String),
    #[error("invalid header name \"{0}\"")]
    HeaderName(String),
    #[error("invalid URL \"{0}\": expected http(s)://host[:port][/path]")]
    Url(String),
    #[error("invalid URL \"{0}\": the scheme must be http or https")]
    UrlScheme(String),
    #[error("invalid URL \"{0}\": a host is required")]
    UrlHost(String),
    #[error("invalid URL \"{0}\": a query string is not allowed here")]
    UrlQuery(String),
    #[error("invalid URL \"{0}\": credentials belong in `auth`, not in the URL")]
    UrlCredentials(String),
    #[error("invalid limit key \"{0}\": expected service or header:<Name>")]
    LimitKey(String),
    #[error("invalid retry condition \"{0}\": expected connect_error, timeout or a status from 400 to 599")]
    RetryCondition(String),
    #[error(
        "invalid field \"{0}\": expected a JSON pointer such as /data/object/id or header:Name"
    )]
    Field(String),
    #[error("invalid address \"{0}\": expected IP:port (e.g. 127.0.0.1:15001 or [::1]:15001)")]
    SocketAddr(String),
    #[error("unknown value \"{value}\": expected one of {expected}")]
    Choice { value: String, expected: String },
    #[error("invalid route \"{0}\": it must start with /")]
    RouteNotAbsolute(String),
    #[error("invalid route \"{0}\": drop the trailing / (routes match whole path segments)")]
    RouteTrailingSlash(String),
    #[error("invalid route \"{0}\": a route is a plain path prefix such as /stripe")]
    Route(String),
    #[error("invalid DNS target \"{0}\": expected name:port")]
    DnsTarget(String),
    #[error("invalid URL \"{0}\": expected the full public URL Twilio calls, e.g. https://hooks.example.com/webhooks/twilio")]
    PublicUrl(String),
    #[error("invalid payload template \"{0}\": it must contain {{body}}")]
    PayloadTemplate(String),
    #[error("invalid content type \"{0}\"")]
    ContentType(String),
    #[error("invalid prefix \"{0}\": use letters, digits, '-', '_' and ':'")]
    Prefix(String),
    #[error(
        "invalid Redis URL: expected redis://[user:password@]host:port[/db] or rediss:// for TLS"
    )]
    RedisUrl,
    #[error("invalid sentinel address {0:?}: expected host:port")]
    SentinelNode(String),
    #[error("invalid glob \"{0}\": {1}")]
    Glob(String, &'static str),
    #[error("invalid ratio \"{0}\": expected a fraction from 0.1 to 0.99 or a percentage (e.g. 0.9 or 90%)")]
    MaxMemoryRatio(String),
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("invalid hook \"{0}\": expected repos/OWNER/REPO/hooks/ID, orgs/ORG/hooks/ID or app")]
    GithubHook(String),
    #[error("{0}")]
    PrivateKey(String),
}

/// A webhook secret that cannot stand for key bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("invalid Standard Webhooks secret: expected whsec_ followed by base64")]
    NotBase64,
}
