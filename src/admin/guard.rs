//! What the admin listener checks before it routes, and the headers every
//! answer carries. A page on `localhost` is reachable by any site the
//! operator visits: a name an attacker rebinds to 127.0.0.1 reaches the
//! listener with the attacker's name in `Host`, so only the loopback names
//! and `admin.hosts` are served (421 otherwise). Probes and `/metrics` are
//! exempt: the kubelet and Prometheus address the pod by its IP, and they
//! read nothing an attacker could use.

/// Served without the admin token: the probes, the metrics and the
/// console's static files (the page asks for the token itself). Every other
/// path needs the token when one is set; a test holds this list to that.
pub const PUBLIC: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/",
    "/events",
    "/event",
    "/config",
    "/console/app.js",
    "/console/app.css",
    "/console/icon.svg",
];

/// Served whatever the `Host` (see the module's comment).
const ANY_HOST: &[&str] = &["/healthz", "/readyz", "/metrics"];

/// The `Host` names always served, with any port.
const LOOPBACK: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

pub fn is_public(path: &str) -> bool {
    PUBLIC.contains(&path)
}

/// Whether a request for `path` with this `Host` header is served.
pub fn host_allowed(path: &str, host: Option<&[u8]>, extra: &[String]) -> bool {
    if ANY_HOST.contains(&path) {
        return true;
    }
    let Some(name) = host.and_then(host_name) else {
        return false;
    };
    LOOPBACK.iter().any(|l| name.eq_ignore_ascii_case(l))
        || extra.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The name of a `Host` header without its port: `[::1]:9901` -> `[::1]`,
/// `localhost:9901` -> `localhost`. None when it is not one name.
fn host_name(host: &[u8]) -> Option<&str> {
    let host = std::str::from_utf8(host).ok()?.trim();
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        if !(rest.is_empty() || is_port(rest.strip_prefix(':')?)) {
            return None;
        }
        name
    } else {
        match host.split_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return None,
            None => host,
        }
    };
    // A fully qualified name's final dot names the same host.
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then_some(name)
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A method that changes state: refused when `admin.read_only` is set.
pub fn changes_state(method: &http::Method) -> bool {
    !matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    )
}

/// The headers on every answer of the admin listener: the page runs only
/// its own script, is never framed, leaks no referrer, and no answer (an
/// event's body, the config) is kept in a cache.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

pub fn secure(response: &mut http::Response<Vec<u8>>) {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(*name, http::HeaderValue::from_static(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_listed_hosts_are_served_with_any_port() {
        let extra = vec!["sidecar.internal".to_string()];
        for host in [
            "localhost",
            "LOCALHOST:9901",
            "localhost.:9901",
            "127.0.0.1",
            "127.0.0.1:9901",
            "[::1]",
            "[::1]:9901",
            "sidecar.internal:80",
            "Sidecar.Internal",
        ] {
            assert!(host_allowed("/", Some(host.as_bytes()), &extra), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9901",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:99999999",
            "localhost:",
            "[::1]x",
            "[::2]:9901",
            "10.0.0.5:9901",
            "",
            "localhost:9901:1",
        ] {
            assert!(!host_allowed("/", Some(host.as_bytes()), &extra), "{host}");
            assert!(!host_allowed(
                "/admin/events",
                Some(host.as_bytes()),
                &extra
            ));
        }
        assert!(!host_allowed("/", None, &extra), "no Host at all");
        assert!(!host_allowed("/", Some(b"local\xffhost"), &extra));
    }

    #[test]
    fn probes_and_metrics_answer_any_host() {
        for path in ANY_HOST {
            assert!(host_allowed(path, Some(b"10.0.0.5:9901"), &[]));
            assert!(host_allowed(path, None, &[]));
        }
    }

    #[test]
    fn only_reads_are_allowed_read_only() {
        assert!(!changes_state(&http::Method::GET));
        assert!(!changes_state(&http::Method::HEAD));
        for method in [
            http::Method::POST,
            http::Method::DELETE,
            http::Method::PUT,
            http::Method::PATCH,
        ] {
            assert!(changes_state(&method));
        }
    }
}
