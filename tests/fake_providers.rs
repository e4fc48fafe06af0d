//! The providers' fakes against what their references document, so that
//! a test of gap repair passing against them means something: paging,
//! filters, cursors and errors of Stripe's `GET /v1/events`.

mod support;

use bytes::Bytes;
use serde_json::{json, Value};
use support::*;

const KEY: &str = "sk_test_fake_0123456789";

async fn list(stripe: &FakeStripe, query: &str) -> (u16, Value) {
    let answer = send(
        "GET",
        &format!("{}/v1/events{query}", stripe.url()),
        &[("authorization", &format!("Bearer {KEY}"))],
        Bytes::new(),
    )
    .await;
    (answer.status, serde_json::from_slice(&answer.body).unwrap())
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// 250 events, one a second from t=1000: evt_0 (oldest) .. evt_249;
/// every third one's webhooks still pending; types alternate.
async fn stripe_with_events() -> FakeStripe {
    let stripe = FakeStripe::start(KEY).await;
    for n in 0..250u64 {
        let kind = if n % 2 == 0 {
            "payment_intent.succeeded"
        } else {
            "charge.refunded"
        };
        let pending = u32::from(n % 3 == 0);
        stripe.add_event(
            &format!("evt_{n}"),
            kind,
            1000 + n,
            "2024-06-20",
            pending,
            json!({ "n": n }),
        );
    }
    stripe
}

#[tokio::test]
async fn stripe_pages_newest_first_with_starting_after_until_has_more_is_false() {
    let stripe = stripe_with_events().await;
    let (status, first) = list(&stripe, "").await;
    assert_eq!(status, 200);
    assert_eq!(first["object"], "list");
    assert_eq!(ids(&first).len(), 10, "the default limit");
    assert_eq!(ids(&first)[0], "evt_249");
    let mut all = Vec::new();
    let mut query = "?limit=100".to_string();
    loop {
        let (_, page) = list(&stripe, &query).await;
        all.extend(ids(&page));
        if page["has_more"] == false {
            break;
        }
        query = format!("?limit=100&starting_after={}", all.last().unwrap());
    }
    let expected: Vec<String> = (0..250).rev().map(|n| format!("evt_{n}")).collect();
    assert_eq!(all, expected);
    // ending_before: the page just newer than a cursor, still newest first.
    let (_, newer) = list(&stripe, "?limit=3&ending_before=evt_100").await;
    assert_eq!(ids(&newer), ["evt_103", "evt_102", "evt_101"]);
    assert_eq!(newer["has_more"], true);
}

#[tokio::test]
async fn stripe_filters_by_created_delivery_success_and_types() {
    let stripe = stripe_with_events().await;
    let (_, page) = list(&stripe, "?limit=100&created%5Bgte%5D=1240").await;
    assert_eq!(ids(&page).len(), 10);
    let (_, page) = list(&stripe, "?limit=100&created[gt]=1240&created[lte]=1245").await;
    assert_eq!(
        ids(&page),
        ["evt_245", "evt_244", "evt_243", "evt_242", "evt_241"]
    );
    let (_, page) = list(&stripe, "?limit=100&created=1007").await;
    assert_eq!(ids(&page), ["evt_7"]);
    let (_, page) = list(
        &stripe,
        "?limit=100&delivery_success=false&created[gte]=1200",
    )
    .await;
    assert_eq!(
        ids(&page),
        [
            "evt_249", "evt_246", "evt_243", "evt_240", "evt_237", "evt_234", "evt_231", "evt_228",
            "evt_225", "evt_222", "evt_219", "evt_216", "evt_213", "evt_210", "evt_207", "evt_204",
            "evt_201"
        ]
    );
    stripe.mark_delivered("evt_249");
    let (_, page) = list(&stripe, "?limit=1&delivery_success=false").await;
    assert_eq!(ids(&page), ["evt_246"], "a delivered event drops out");
    let (_, page) = list(
        &stripe,
        "?limit=100&types%5B%5D=charge.refunded&created[gte]=1240",
    )
    .await;
    assert_eq!(
        ids(&page),
        ["evt_249", "evt_247", "evt_245", "evt_243", "evt_241"]
    );
    let (_, page) = list(
        &stripe,
        "?limit=100&type=payment_intent.*&created[gte]=1246",
    )
    .await;
    assert_eq!(ids(&page), ["evt_248", "evt_246"]);
}

#[tokio::test]
async fn stripe_answers_its_errors() {
    let stripe = stripe_with_events().await;
    let unauthorized = send(
        "GET",
        &format!("{}/v1/events", stripe.url()),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(unauthorized.status, 401);
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?created[gte]=soon", "created[gte]"),
        ("?delivery_success=maybe", "delivery_success"),
        ("?type=a&types[]=b", "types"),
        ("?starting_after=evt_nope", "starting_after"),
    ] {
        let (status, body) = list(&stripe, query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{query}");
    }
    let missing = send(
        "GET",
        &format!("{}/v1/events/evt_nope", stripe.url()),
        &[("authorization", &format!("Bearer {KEY}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(missing.status, 404);
    stripe.fail_next(&[429, 500]);
    let (status, body) = list(&stripe, "").await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (429, Some("rate_limit_error"))
    );
    let (status, body) = list(&stripe, "").await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (500, Some("api_error"))
    );
    assert_eq!(list(&stripe, "").await.0, 200);
    assert_eq!(stripe.list_calls(), 3 + 6);
}
