//! GitHub's hook deliveries: `GET {hook}/deliveries`, newest first, paged
//! by the cursor in the `Link` header, and `POST
//! {hook}/deliveries/{id}/attempts`, which makes GitHub send a delivery
//! again, signed, with the same `X-GitHub-Delivery`: it then arrives
//! through the webhook's verified path. GitHub has no filter by time or
//! outcome, so a run reads back to its window's start and picks the
//! events (guids) none of whose deliveries succeeded. Every answer is the
//! provider's, so hostile until parsed.

use std::collections::HashMap;

use super::api::{refusal, Api};
use crate::net::client::ClientError;

/// Deliveries per page (GitHub's most): items are small, no payloads.
const PER_PAGE: usize = 100;
/// The most pages one run reads: 100,000 deliveries.
const MAX_PAGES: usize = 1_000;
const HEADERS: &[(&str, &str)] = &[
    ("accept", "application/vnd.github+json"),
    ("x-github-api-version", "2022-11-28"),
];

/// One delivery as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedDelivery {
    pub id: u64,
    pub guid: String,
    /// `X-GitHub-Event`.
    pub event: String,
    pub action: Option<String>,
    /// GitHub's `status` was `OK`: the receiver answered 2xx.
    pub ok: bool,
    /// Unix seconds.
    pub delivered_at: u64,
}

impl ListedDelivery {
    /// The event type the webhook's routes see (`issues.opened`), as the
    /// webhook extracts it from `X-GitHub-Event` and the payload's action.
    pub fn event_type(&self) -> String {
        match &self.action {
            Some(action) => format!("{}.{action}", self.event),
            None => self.event.clone(),
        }
    }
}

/// An event no delivery of which succeeded: GitHub is asked to send its
/// newest delivery again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undelivered {
    pub guid: String,
    pub delivery: u64,
    pub event_type: String,
}

pub struct Source<'a> {
    pub api: Api<'a>,
    /// `/repos/OWNER/REPO/hooks/ID`, `/orgs/ORG/hooks/ID` or `/app/hook`.
    pub hook: &'a str,
}

impl Source<'_> {
    /// Every delivery from `since` (Unix seconds) on, newest first: pages
    /// are read until one reaches past `since` or there is no next.
    pub async fn deliveries_since(&self, since: u64) -> Result<Vec<ListedDelivery>, String> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        let mut per_page = PER_PAGE;
        for _ in 0..MAX_PAGES {
            let path = self.list_path(per_page, cursor.as_deref());
            let answer = match self.api.call("GET", &path, HEADERS).await {
                Err(ClientError::TooLarge) if per_page > 1 => {
                    per_page = (per_page / 4).max(1);
                    continue;
                }
                Err(error) => return Err(format!("GET {path}: {error}")),
                Ok(answer) => answer,
            };
            if answer.status != 200 {
                return Err(format!(
                    "GET {path}: {}",
                    refusal(answer.status, &answer.body)
                ));
            }
            let page = parse_page(&answer.body).map_err(|e| format!("GET {path}: {e}"))?;
            let reached = page.iter().any(|d| d.delivered_at < since);
            all.extend(page);
            let link = answer
                .headers
                .get_all("link")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            match next_cursor(&link) {
                Some(next) if !reached => cursor = Some(next),
                _ => return Ok(all),
            }
        }
        Err(format!(
            "more than {MAX_PAGES} pages of deliveries in one run; the rest waits for the next"
        ))
    }

    /// Asks GitHub to deliver `delivery` again.
    pub async fn redeliver(&self, delivery: u64) -> Result<(), String> {
        let path = self
            .api
            .path(&format!("{}/deliveries/{delivery}/attempts", self.hook));
        match self.api.call("POST", &path, HEADERS).await {
            Err(error) => Err(format!("POST {path}: {error}")),
            Ok(answer) if (200..300).contains(&answer.status) => Ok(()),
            Ok(answer) => Err(format!(
                "POST {path}: {}",
                refusal(answer.status, &answer.body)
            )),
        }
    }

    fn list_path(&self, per_page: usize, cursor: Option<&str>) -> String {
        let mut path = self
            .api
            .path(&format!("{}/deliveries?per_page={per_page}", self.hook));
        if let Some(cursor) = cursor {
            path.push_str("&cursor=");
            path.extend(form_urlencoded::byte_serialize(cursor.as_bytes()));
        }
        path
    }
}

/// The events of the window (a delivery at or after `since`) none of
/// whose listed deliveries succeeded, oldest first, each with its newest
/// delivery. A success before the window still counts: a redelivery
/// that went through is never asked for again.
pub fn undelivered(deliveries: &[ListedDelivery], since: u64) -> Vec<Undelivered> {
    struct Seen {
        ok: bool,
        in_window: bool,
        newest: u64,
        oldest_at: u64,
        event_type: String,
    }
    let mut by_guid: HashMap<&str, Seen> = HashMap::new();
    for d in deliveries {
        let seen = by_guid.entry(&d.guid).or_insert_with(|| Seen {
            ok: false,
            in_window: false,
            newest: d.id,
            oldest_at: d.delivered_at,
            event_type: d.event_type(),
        });
        seen.ok |= d.ok;
        seen.in_window |= d.delivered_at >= since;
        seen.newest = seen.newest.max(d.id);
        seen.oldest_at = seen.oldest_at.min(d.delivered_at);
    }
    let mut found: Vec<(u64, Undelivered)> = by_guid
        .into_iter()
        .filter(|(_, seen)| seen.in_window && !seen.ok)
        .map(|(guid, seen)| {
            (
                seen.oldest_at,
                Undelivered {
                    guid: guid.to_string(),
                    delivery: seen.newest,
                    event_type: seen.event_type,
                },
            )
        })
        .collect();
    found.sort_by_key(|(at, u)| (*at, u.delivery));
    found.into_iter().map(|(_, u)| u).collect()
}

/// The next page's cursor, from a `Link` header's `rel="next"` URL.
pub fn next_cursor(link: &str) -> Option<String> {
    link.split(',').find_map(|entry| {
        let (url, params) = entry.trim().split_once(';')?;
        let url = url.trim().strip_prefix('<')?.strip_suffix('>')?;
        let next = params.split(';').any(|param| {
            param.trim().split_once('=').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
        });
        if !next {
            return None;
        }
        let (_, query) = url.split_once('?')?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "cursor")
            .map(|(_, value)| value.into_owned())
            .filter(|cursor| !cursor.is_empty() && cursor.len() <= 200)
    })
}

/// A page of deliveries. An item without an id, a guid, an event, a
/// status or a readable `delivered_at` refuses the page whole: it is not
/// GitHub's.
pub fn parse_page(body: &[u8]) -> Result<Vec<ListedDelivery>, String> {
    let page: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not a JSON list: {e}"))?;
    let items = page.as_array().ok_or("not a list of deliveries")?;
    items
        .iter()
        .map(|item| {
            let text = |key: &str| {
                item[key]
                    .as_str()
                    .filter(|t| !t.is_empty() && t.len() <= 255)
                    .map(str::to_string)
            };
            let delivered_at = text("delivered_at")
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second().max(0) as u64)
                .ok_or("a delivery without a readable delivered_at")?;
            Ok(ListedDelivery {
                id: item["id"].as_u64().ok_or("a delivery without an id")?,
                guid: text("guid").ok_or("a delivery without a guid")?,
                event: text("event").ok_or("a delivery without an event")?,
                action: text("action"),
                ok: text("status").ok_or("a delivery without a status")? == "OK",
                delivered_at,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: u64, guid: &str, ok: bool, at: u64) -> ListedDelivery {
        ListedDelivery {
            id,
            guid: guid.into(),
            event: "issues".into(),
            action: Some("opened".into()),
            ok,
            delivered_at: at,
        }
    }

    #[test]
    fn the_cursor_comes_from_the_next_link_only() {
        let link = r#"<https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100&cursor=v1_1209>; rel="next", <https://api.github.com/repos/o/r/hooks/1/deliveries?per_page=100>; rel="first""#;
        assert_eq!(next_cursor(link).as_deref(), Some("v1_1209"));
        assert_eq!(
            next_cursor(r#"<https://api.github.com/x?per_page=100>; rel="first""#),
            None
        );
        assert_eq!(next_cursor(""), None);
        assert_eq!(next_cursor("garbage; rel=next"), None);
        assert_eq!(
            next_cursor("</x?cursor=a%2Bb>; rel=next").as_deref(),
            Some("a+b"),
            "unquoted rel, an encoded cursor"
        );
    }

    #[test]
    fn a_page_is_parsed_or_refused_whole() {
        let page = br#"[
            {"id":12,"guid":"0b989ba4-242f-11e5-81e1-c7b6966d2516","delivered_at":"2019-06-03T00:57:16Z","redelivery":false,"duration":0.27,"status":"OK","status_code":200,"event":"issues","action":"opened","installation_id":123,"repository_id":456},
            {"id":11,"guid":"a","delivered_at":"2019-06-03T00:57:15Z","redelivery":false,"duration":0.27,"status":"Invalid HTTP Response: 503","status_code":503,"event":"push","action":null,"installation_id":null,"repository_id":456}]"#;
        let deliveries = parse_page(page).unwrap();
        assert_eq!(
            deliveries[0],
            ListedDelivery {
                id: 12,
                guid: "0b989ba4-242f-11e5-81e1-c7b6966d2516".into(),
                event: "issues".into(),
                action: Some("opened".into()),
                ok: true,
                delivered_at: 1_559_523_436,
            }
        );
        assert_eq!(deliveries[1].event_type(), "push");
        assert!(!deliveries[1].ok);
        for bad in [
            &b"{}"[..],
            b"not json",
            br#"[{"guid":"a","delivered_at":"2019-06-03T00:57:15Z","status":"OK","event":"push"}]"#,
            br#"[{"id":1,"delivered_at":"2019-06-03T00:57:15Z","status":"OK","event":"push"}]"#,
            br#"[{"id":1,"guid":"a","delivered_at":"yesterday","status":"OK","event":"push"}]"#,
            br#"[{"id":1,"guid":"a","delivered_at":"2019-06-03T00:57:15Z","event":"push"}]"#,
        ] {
            assert!(parse_page(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn only_events_of_the_window_without_a_success_are_asked_for_oldest_first() {
        let deliveries = vec![
            // newest first, as listed
            delivery(9, "retried-ok", true, 1_000),
            delivery(8, "late", false, 990),
            delivery(7, "retried-ok", false, 980),
            delivery(6, "twice-failed", false, 970),
            delivery(5, "twice-failed", false, 960),
            delivery(4, "fine", true, 950),
            delivery(3, "before-window", false, 800),
        ];
        let found = undelivered(&deliveries, 900);
        assert_eq!(
            found,
            vec![
                Undelivered {
                    guid: "twice-failed".into(),
                    delivery: 6,
                    event_type: "issues.opened".into()
                },
                Undelivered {
                    guid: "late".into(),
                    delivery: 8,
                    event_type: "issues.opened".into()
                },
            ]
        );
    }
}
