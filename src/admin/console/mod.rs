//! The operator console: one page of plain HTML, CSS and JavaScript,
//! embedded in the binary (no build step, no CDN, works offline). Every
//! page path answers the same document; its script reads the path and the
//! query (the view and its filters, so a URL can be shared) and calls the
//! admin API. The script is a file of its own because the page's
//! Content-Security-Policy allows no inline script.

pub struct Asset {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const PAGE: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("index.html"),
};

/// What the page must know before its first call: whether to ask for the
/// token first (an API call answered 401 would log an error in the
/// browser's console) and whether to show buttons that change state.
pub fn page(token_required: bool, read_only: bool) -> Vec<u8> {
    let text = std::str::from_utf8(PAGE.body).expect("the page is UTF-8");
    text.replacen(
        r#"<meta name="wedsync-console" content="">"#,
        &format!(
            r#"<meta name="wedsync-console" content="token_required={} read_only={}">"#,
            u8::from(token_required),
            u8::from(read_only)
        ),
        1,
    )
    .into_bytes()
}

/// The asset at `path`, if the console serves one there.
pub fn asset(path: &str) -> Option<Asset> {
    Some(match path {
        "/" | "/events" | "/event" | "/config" => PAGE,
        "/console/app.js" => Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_bytes!("app.js"),
        },
        "/console/app.css" => Asset {
            content_type: "text/css; charset=utf-8",
            body: include_bytes!("app.css"),
        },
        "/console/icon.svg" => Asset {
            content_type: "image/svg+xml",
            body: include_bytes!("icon.svg"),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::guard;

    #[test]
    fn every_asset_is_public_and_every_public_page_is_an_asset_or_a_probe() {
        for path in guard::PUBLIC {
            let probe = ["/healthz", "/readyz", "/metrics"].contains(path);
            assert_eq!(asset(path).is_some(), !probe, "{path}");
        }
        assert!(asset("/console/other.js").is_none());
        assert!(asset("/admin/events").is_none());
    }

    #[test]
    fn the_page_says_what_it_must_know_before_its_first_call() {
        let guarded = String::from_utf8(page(true, false)).unwrap();
        assert!(guarded.contains(r#"content="token_required=1 read_only=0""#));
        let read_only = String::from_utf8(page(false, true)).unwrap();
        assert!(read_only.contains(r#"content="token_required=0 read_only=1""#));
    }

    #[test]
    fn the_page_stays_small_and_loads_nothing_from_elsewhere() {
        let total: usize = guard::PUBLIC
            .iter()
            .filter_map(|p| asset(p))
            .map(|a| a.body.len())
            .sum();
        // Uncompressed, four times over the page path: well under 150 KiB
        // compressed.
        assert!(total < 600 * 1024, "{total} bytes");
        for path in ["/", "/console/app.js", "/console/app.css"] {
            let text = std::str::from_utf8(asset(path).unwrap().body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{path} loads from elsewhere"
            );
            assert!(!text.contains("<script>"), "{path} has an inline script");
        }
    }
}
