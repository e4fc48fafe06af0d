//! Which service a request path belongs to, and the path the provider sees:
//! the longest route prefix wins (whole segments only), the prefix is
//! stripped, the upstream's base path prepended, and the query kept as sent.

/// Route prefixes sorted longest first, each with the index of its service.
pub struct RouteTable {
    routes: Vec<(String, usize)>,
}

impl RouteTable {
    pub fn new<'a>(prefixes: impl IntoIterator<Item = &'a str>) -> Self {
        let mut routes: Vec<(String, usize)> = prefixes
            .into_iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), i))
            .collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.0.len()));
        Self { routes }
    }

    /// The service index and the rest of the path after the prefix.
    pub fn find<'p>(&self, path: &'p str) -> Option<(usize, &'p str)> {
        self.routes.iter().find_map(|(prefix, index)| {
            if prefix == "/" {
                return Some((*index, path));
            }
            let rest = path.strip_prefix(prefix.as_str())?;
            (rest.is_empty() || rest.starts_with('/')).then_some((*index, rest))
        })
    }
}

/// `base_path` + `rest` (or `/`) + `?query`.
pub fn upstream_path(base_path: &str, rest: &str, query: Option<&str>) -> String {
    let mut path =
        String::with_capacity(base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    path.push_str(base_path);
    if rest.is_empty() {
        path.push('/');
    } else {
        path.push_str(rest);
    }
    if let Some(query) = query {
        path.push('?');
        path.push_str(query);
    }
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_segments_longest_first() {
        let table = RouteTable::new(["/stripe", "/stripe-connect", "/suppliers"]);
        assert_eq!(table.find("/stripe/v1/charges"), Some((0, "/v1/charges")));
        assert_eq!(table.find("/stripe"), Some((0, "")));
        assert_eq!(table.find("/stripe-connect/x"), Some((1, "/x")));
        assert_eq!(table.find("/stripes"), None);
        assert_eq!(table.find("/"), None);
    }

    #[test]
    fn a_root_route_catches_the_rest() {
        let table = RouteTable::new(["/", "/stripe"]);
        assert_eq!(table.find("/stripe/x"), Some((1, "/x")));
        assert_eq!(table.find("/other"), Some((0, "/other")));
    }

    #[test]
    fn builds_the_provider_path_with_base_and_query() {
        assert_eq!(
            upstream_path("", "/v1/charges", Some("limit=3")),
            "/v1/charges?limit=3"
        );
        assert_eq!(upstream_path("/base", "", None), "/base/");
        assert_eq!(upstream_path("", "", None), "/");
        assert_eq!(upstream_path("/v2", "/items", Some("")), "/v2/items?");
    }
}
