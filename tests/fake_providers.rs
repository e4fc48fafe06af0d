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

const GITHUB_TOKEN: &str = "ghs_fake_installation_token";
const HOOK: &str = "/repos/wedsync/app/hooks/7";

async fn github_get(github: &FakeGitHub, path_and_query: &str) -> Answer {
    send(
        "GET",
        &format!("{}{HOOK}/deliveries{path_and_query}", github.url()),
        &[("authorization", &format!("Bearer {GITHUB_TOKEN}"))],
        Bytes::new(),
    )
    .await
}

/// The `rel="next"` URL of a `Link` header, if any.
fn next_link(answer: &Answer) -> Option<String> {
    let link = answer.headers.get("link")?;
    link.split(',')
        .find(|part| part.contains("rel=\"next\""))
        .and_then(|part| part.trim().strip_prefix('<'))
        .and_then(|part| part.split_once('>'))
        .map(|(url, _)| url.to_string())
}

#[tokio::test]
async fn github_pages_deliveries_by_the_link_header_and_redelivers_signed_with_the_same_guid() {
    let target = MockServer::start(|_| MockAnswer::status(202, "")).await;
    let github = FakeGitHub::start(
        HOOK,
        GITHUB_TOKEN,
        "hook-secret-0123456789",
        &format!("{}/webhooks/github", target.url()),
    )
    .await;
    let mut guids = Vec::new();
    for n in 0..45 {
        guids.push(github.failed_event("push", &format!(r#"{{"n":{n}}}"#), 502));
    }
    let delivered = github.send_event("issues", r#"{"n":45}"#).await;
    assert_eq!(github.deliveries().last().unwrap().status_code, 202);
    // Newest first, 20 a page, the cursor only in the Link header.
    let mut seen = Vec::new();
    let mut url = "?per_page=20".to_string();
    loop {
        let answer = github_get(&github, &url).await;
        assert_eq!(answer.status, 200);
        let page: Value = serde_json::from_slice(&answer.body).unwrap();
        seen.extend(
            page.as_array()
                .unwrap()
                .iter()
                .map(|d| d["guid"].as_str().unwrap().to_string()),
        );
        match next_link(&answer) {
            Some(next) => url = next.split_once('?').map(|(_, q)| format!("?{q}")).unwrap(),
            None => break,
        }
    }
    let mut expected: Vec<String> = guids.clone();
    expected.push(delivered.clone());
    expected.reverse();
    assert_eq!(seen, expected);
    let first: Value =
        serde_json::from_slice(&github_get(&github, "?per_page=1").await.body).unwrap();
    assert_eq!(first[0]["status"], "OK");
    let failed = &github.deliveries()[0];
    let one: Value =
        serde_json::from_slice(&github_get(&github, &format!("/{}", failed.id)).await.body)
            .unwrap();
    assert_eq!(one["status"], "Invalid HTTP Response: 502");
    assert_eq!(one["request"]["payload"]["n"], 0);
    // Redelivery: 202, then the original, signed, same guid, to the hook's URL.
    let attempt = send(
        "POST",
        &format!("{}{HOOK}/deliveries/{}/attempts", github.url(), failed.id),
        &[("authorization", &format!("Bearer {GITHUB_TOKEN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(attempt.status, 202);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while github.deliveries().len() < 47 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let again = github.deliveries().last().unwrap().clone();
    assert_eq!(
        (again.guid.as_str(), again.redelivery, again.status_code),
        (failed.guid.as_str(), true, 202)
    );
    let sent = target
        .requests()
        .into_iter()
        .find(|s| s.headers.get("x-github-delivery") == Some(&failed.guid))
        .unwrap();
    assert_eq!(&sent.body[..], br#"{"n":0}"#);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"hook-secret-0123456789");
    let expected_signature: String = ring::hmac::sign(&key, br#"{"n":0}"#)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        sent.headers["x-hub-signature-256"],
        format!("sha256={expected_signature}")
    );
    let redelivered: Value =
        serde_json::from_slice(&github_get(&github, "?redelivery=true").await.body).unwrap();
    assert_eq!(redelivered.as_array().unwrap().len(), 1);
    assert_eq!(github.redeliveries_asked(), [failed.id]);
}

#[tokio::test]
async fn github_answers_its_errors() {
    let github = FakeGitHub::start(
        HOOK,
        GITHUB_TOKEN,
        "hook-secret-0123456789",
        "http://127.0.0.1:9/",
    )
    .await;
    github.failed_event("push", "{}", 502);
    let anonymous = send(
        "GET",
        &format!("{}{HOOK}/deliveries", github.url()),
        &[],
        Bytes::new(),
    )
    .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(github_get(&github, "?per_page=101").await.status, 422);
    assert_eq!(github_get(&github, "?cursor=v1_1").await.status, 400);
    assert_eq!(github_get(&github, "/999").await.status, 404);
    github.fail_next(&[403, 500]);
    let limited = github_get(&github, "").await;
    assert_eq!(limited.status, 403);
    assert_eq!(limited.headers["x-ratelimit-remaining"], "0");
    assert_eq!(github_get(&github, "").await.status, 500);
    assert_eq!(github_get(&github, "").await.status, 200);
    let other_hook = send(
        "GET",
        &format!("{}/repos/wedsync/app/hooks/8/deliveries", github.url()),
        &[("authorization", &format!("Bearer {GITHUB_TOKEN}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(other_hook.status, 404);
}

#[tokio::test]
async fn github_app_hooks_take_only_a_jwt_the_apps_key_signed_for_ten_minutes_at_most() {
    use wedsync_sidecar::config::private_key::RsaPrivateKey;
    let public = include_bytes!("fixtures/github_app_test_key.pub.der");
    let key = RsaPrivateKey::from_pem(include_str!("fixtures/github_app_test_key.pem")).unwrap();
    let github = FakeGitHub::start_app(
        "42",
        public,
        "hook-secret-0123456789",
        "http://127.0.0.1:9/",
    )
    .await;
    let call = |token: String| {
        let url = format!("{}/app/hook/deliveries", github.url());
        async move {
            send(
                "GET",
                &url,
                &[("authorization", &format!("Bearer {token}"))],
                Bytes::new(),
            )
            .await
        }
    };
    let now = wedsync_sidecar::time::unix_time().as_secs();
    let jwt =
        |app: &str, at: u64| wedsync_sidecar::signing::jwt::github_app(app, key.key(), at).unwrap();
    assert_eq!(call(jwt("42", now)).await.status, 200);
    let wrong_app = call(jwt("43", now)).await;
    assert_eq!(wrong_app.status, 401);
    assert_eq!(wrong_app.json()["message"], "Integration not found");
    assert_eq!(call(jwt("42", now - 700)).await.status, 401, "expired");
    let valid = jwt("42", now);
    let mut tampered = valid.clone();
    tampered.replace_range(valid.len() - 4.., "AAAA");
    assert_eq!(call(tampered).await.status, 401, "not the app's signature");
    assert_eq!(
        call(GITHUB_TOKEN.to_string()).await.status,
        401,
        "a token is not a JWT"
    );
}
