//! Stripe's undelivered events: `GET /v1/events?delivery_success=false`
//! from a run's start, newest first, paged with `starting_after`, through
//! the egress listener under the service's route. Every answer is the
//! provider's, so hostile until parsed: bounded (a page is read whole, at
//! most 1 MiB: pages shrink when one is larger), and every field checked.

use bytes::Bytes;

use super::api::{refusal, Api};
use crate::config::webhooks::Route;
use crate::net::client::ClientError;

/// Events asked for per page at first (Stripe allows 100; its events can
/// be large, and a page is read whole).
const PAGE: usize = 25;
/// The most pages one run reads: 250,000 events at the largest page.
const MAX_PAGES: usize = 10_000;
/// Stripe's `types[]` takes at most this many names.
const MAX_TYPES: usize = 20;

/// One event as the API lists it.
#[derive(Debug, Clone)]
pub struct ListedEvent {
    pub id: String,
    pub event_type: String,
    pub api_version: Option<String>,
    pub created: u64,
    /// The event object, as a webhook would have carried it.
    pub body: Bytes,
}

/// The exact type names the routes take, when every pattern is one and
/// there are few enough for `types[]`; otherwise None (every type is
/// listed and the routes are matched here).
pub fn listed_types(routes: &[Route]) -> Option<Vec<String>> {
    let names: Vec<String> = routes
        .iter()
        .flat_map(|r| r.events.iter())
        .map(|glob| glob.as_str().to_string())
        .collect();
    let exact = names.iter().all(|n| !n.contains('*'));
    (exact && !names.is_empty() && names.len() <= MAX_TYPES).then_some(names)
}

pub struct Source<'a> {
    pub api: Api<'a>,
    pub types: Option<Vec<String>>,
}

impl<'a> Source<'a> {
    pub fn pages(self, since: u64) -> Pages<'a> {
        Pages {
            source: self,
            since,
            after: None,
            done: false,
            page: PAGE,
            read: 0,
        }
    }

    fn path(&self, since: u64, limit: usize, after: Option<&str>) -> String {
        let mut path = self.api.path(&format!(
            "/v1/events?delivery_success=false&created%5Bgte%5D={since}&limit={limit}"
        ));
        for name in self.types.iter().flatten() {
            path.push_str("&types%5B%5D=");
            path.extend(form_urlencoded::byte_serialize(name.as_bytes()));
        }
        if let Some(after) = after {
            path.push_str("&starting_after=");
            path.extend(form_urlencoded::byte_serialize(after.as_bytes()));
        }
        path
    }
}

pub struct Pages<'a> {
    source: Source<'a>,
    since: u64,
    after: Option<String>,
    done: bool,
    page: usize,
    read: usize,
}

impl Pages<'_> {
    /// The next page's events; None once `has_more` is false.
    pub async fn next(&mut self) -> Result<Option<Vec<ListedEvent>>, String> {
        if self.done {
            return Ok(None);
        }
        self.read += 1;
        if self.read > MAX_PAGES {
            return Err(format!(
                "more than {MAX_PAGES} pages in one run; the rest waits for the next"
            ));
        }
        loop {
            let path = self
                .source
                .path(self.since, self.page, self.after.as_deref());
            let answer = self
                .source
                .api
                .call("GET", &path, &[("accept", "application/json")])
                .await
                .map(|answer| (answer.status, answer.body));
            match answer {
                Err(ClientError::TooLarge) if self.page > 1 => self.page = (self.page / 4).max(1),
                Err(error) => return Err(format!("GET {path}: {error}")),
                Ok((200, body)) => {
                    let (events, more) =
                        parse_page(&body).map_err(|e| format!("GET {path}: {e}"))?;
                    match events.last() {
                        Some(last) if more => self.after = Some(last.id.clone()),
                        _ => self.done = true,
                    }
                    return Ok(Some(events));
                }
                Ok((status, body)) => {
                    return Err(format!("GET {path}: {}", refusal(status, &body)))
                }
            }
        }
    }
}

/// A list page: its events and `has_more`. Events without an id, a type
/// or a creation time are refused whole: the page is not Stripe's.
pub fn parse_page(body: &[u8]) -> Result<(Vec<ListedEvent>, bool), String> {
    let page: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON list: {e}"))?;
    let data = page["data"].as_array().ok_or("a list without data")?;
    let more = page["has_more"]
        .as_bool()
        .ok_or("a list without has_more")?;
    let events = data
        .iter()
        .map(|event| {
            let text = |key: &str| event[key].as_str().map(str::to_string);
            let id = text("id")
                .filter(|id| !id.is_empty() && id.len() <= 255)
                .ok_or("an event without an id")?;
            Ok(ListedEvent {
                event_type: text("type").ok_or("an event without a type")?,
                api_version: text("api_version"),
                created: event["created"]
                    .as_u64()
                    .ok_or("an event without created")?,
                body: Bytes::from(serde_json::to_vec(event).map_err(|e| e.to_string())?),
                id,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((events, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::pattern::Glob;

    #[test]
    fn a_page_is_parsed_or_refused_whole() {
        let page = br#"{"object":"list","has_more":true,"data":[
            {"id":"evt_2","type":"charge.refunded","api_version":"2024-06-20","created":1700000002,"data":{"object":{}}},
            {"id":"evt_1","type":"payment_intent.succeeded","created":1700000001,"data":{"object":{}}}]}"#;
        let (events, more) = parse_page(page).unwrap();
        assert!(more);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "evt_2");
        assert_eq!(events[0].api_version.as_deref(), Some("2024-06-20"));
        assert_eq!(events[1].api_version, None);
        let body: serde_json::Value = serde_json::from_slice(&events[1].body).unwrap();
        assert_eq!(body["id"], "evt_1");
        for bad in [
            &b"not json"[..],
            br#"{"data":[]}"#,
            br#"{"has_more":false}"#,
            br#"{"has_more":false,"data":[{"type":"x","created":1}]}"#,
            br#"{"has_more":false,"data":[{"id":"evt_1","created":1}]}"#,
            br#"{"has_more":false,"data":[{"id":"evt_1","type":"x","created":"yesterday"}]}"#,
        ] {
            assert!(parse_page(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn exact_route_types_are_asked_for_and_globs_are_matched_here() {
        let route = |events: &[&str]| Route {
            events: events.iter().map(|e| Glob::new(e)).collect(),
            targets: vec!["notify".into()],
        };
        assert_eq!(
            listed_types(&[
                route(&["payment_intent.succeeded"]),
                route(&["charge.refunded"])
            ]),
            Some(vec![
                "payment_intent.succeeded".into(),
                "charge.refunded".into()
            ])
        );
        assert_eq!(listed_types(&[route(&["payment_intent.*"])]), None);
        assert_eq!(listed_types(&[route(&["*"])]), None);
        let many: Vec<String> = (0..21).map(|n| format!("t.{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert_eq!(
            listed_types(&[route(&many)]),
            None,
            "more than types[] takes"
        );
    }

    #[test]
    fn the_path_asks_for_undelivered_events_from_the_start_under_the_route() {
        let client = crate::net::client::SmallClient::default();
        let source = Source {
            api: Api {
                client: &client,
                egress: "127.0.0.1:15001".parse().unwrap(),
                route: "/stripe/",
            },
            types: Some(vec!["charge.refunded".into()]),
        };
        assert_eq!(
            source.path(1700000000, 25, Some("evt_1&x")),
            "/stripe/v1/events?delivery_success=false&created%5Bgte%5D=1700000000&limit=25&types%5B%5D=charge.refunded&starting_after=evt_1%26x"
        );
    }
}
