//! Black-box tests of the webhook ingress with the real binary: verified
//! events are stored durably before the 2xx, duplicates are recognised,
//! forgeries and oversized bodies are refused, and an accepted event
//! survives the sidecar being killed right after its answer.

mod support;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use support::*;
use wedsync_sidecar::webhooks::verify::stripe::Stripe;
use wedsync_sidecar::webhooks::verify::Scheme;

/// `extra`: more YAML after the stripe webhook (usually more webhooks,
/// indented under `webhooks:`).
fn config(extra: &str) -> String {
    let yaml = Yaml::new()
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&[
            "max_body: 1KiB",
            "priority: { high: [payment_intent.succeeded] }",
            "routes: [{ events: [\"payment_intent.*\"], targets: [notify] }]",
        ])
        .build();
    format!("{yaml}{extra}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stripe_signature(body: &[u8]) -> String {
    stripe_signature_with(SECRET, body)
}

async fn post(sidecar: &Sidecar, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    send(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        headers,
        Bytes::copy_from_slice(body),
    )
    .await
}

const EVENT: &[u8] = br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#;

#[tokio::test]
async fn a_verified_event_is_accepted_once_and_stored_with_its_jobs() {
    let sidecar = Sidecar::start(&config(""));
    let signature = stripe_signature(EVENT);
    let headers = [
        ("stripe-signature", signature.as_str()),
        ("content-type", "application/json"),
    ];
    let answer = post(&sidecar, &headers, EVENT).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    assert_eq!(
        answer.json(),
        serde_json::json!({"status": "accepted", "id": "evt_1"})
    );
    let again = post(&sidecar, &headers, EVENT).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "duplicate");
    sidecar
        .metrics_containing(&[
            "sidecar_webhooks_received_total{outcome=\"accepted\",webhook=\"stripe\"} 1",
            "sidecar_webhooks_received_total{outcome=\"duplicate\",webhook=\"stripe\"} 1",
            "sidecar_webhook_ack_duration_seconds_count{webhook=\"stripe\"} 2",
        ])
        .await;
}

#[tokio::test]
async fn forgeries_are_refused_with_the_failed_check_and_never_the_signature() {
    let sidecar = Sidecar::start(&config(""));
    let signature = stripe_signature(EVENT);
    let tampered = br#"{"id":"evt_1","type":"payment_intent.succeeded","amount":1}"#;
    // (headers, body, the check that fails)
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u8], &'a str);
    let cases: [Case; 3] = [
        (
            &[("stripe-signature", signature.as_str())],
            tampered,
            "signature_mismatch",
        ),
        (&[], EVENT, "missing_signature"),
        (
            &[("stripe-signature", "t=1,v1=zz")],
            EVENT,
            "malformed_signature",
        ),
    ];
    for (headers, body, reason) in cases {
        let answer = post(&sidecar, headers, body).await;
        assert_eq!(answer.status, 401, "{reason}");
        assert_eq!(answer.headers["x-sidecar-error"], "signature_invalid");
        assert_eq!(answer.json()["detail"], reason);
        assert!(!answer.text().contains(SECRET));
    }
    let scheme = Stripe {
        keys: vec![SECRET.as_bytes().to_vec()],
        tolerance: Duration::from_secs(300),
    };
    let stale = scheme.sign(EVENT, now() - 3600).headers[0].1.clone();
    let answer = post(&sidecar, &[("stripe-signature", stale.as_str())], EVENT).await;
    assert_eq!(
        answer.json()["detail"],
        "timestamp_out_of_tolerance",
        "a replay an hour later"
    );
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"signature_mismatch\",webhook=\"stripe\"} 1",
            "sidecar_webhooks_received_total{outcome=\"rejected\",webhook=\"stripe\"} 4",
        ])
        .await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_declared_or_chunked() {
    let sidecar = Sidecar::start(&config(""));
    let big = vec![b'x'; 2048];
    let answer = post(&sidecar, &[("stripe-signature", "t=1,v1=00")], &big).await;
    assert_eq!(answer.status, 413);
    assert_eq!(answer.headers["x-sidecar-error"], "payload_too_large");
    // A chunked body's size shows only as it arrives: the header checks
    // (a fresh timestamp here) pass first, then the cap cuts it off.
    let fresh = format!("t={},v1=00", now());
    let answer = send_body(
        "POST",
        &format!("http://{}/webhooks/stripe", sidecar.ingress),
        &[("stripe-signature", fresh.as_str())],
        ChunkedBody { remaining: 4096 },
    )
    .await;
    assert_eq!(answer.status, 413);
}

#[tokio::test]
async fn slack_url_verification_is_answered_with_its_challenge() {
    let secret = "slack-signing-secret-0123";
    let body = format!(
        "upstreams:\n  notify: {{ backends: [127.0.0.1:9] }}\nwebhooks:\n  slack:\n    path: /webhooks/slack\n    verify: {{ kind: slack, secrets: [{secret}] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n"
    );
    let sidecar = Sidecar::start(&body);
    let payload = br#"{"type":"url_verification","challenge":"c-123"}"#;
    let scheme = wedsync_sidecar::webhooks::verify::slack::Slack {
        keys: vec![secret.as_bytes().to_vec()],
        tolerance: Duration::from_secs(300),
    };
    let signed = scheme.sign(payload, now());
    let headers: Vec<(&str, &str)> = signed
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let answer = send(
        "POST",
        &format!("http://{}/webhooks/slack", sidecar.ingress),
        &headers,
        Bytes::from_static(payload),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json(), serde_json::json!({"challenge": "c-123"}));
}

#[tokio::test]
async fn an_accepted_event_survives_the_sidecar_being_killed() {
    let mut sidecar = Sidecar::start(&config(""));
    let signature = stripe_signature(EVENT);
    let answer = post(&sidecar, &[("stripe-signature", signature.as_str())], EVENT).await;
    assert_eq!(answer.status, 202);
    // SIGKILL right after the answer: no shutdown, no flush of anything.
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    let store = support::embedded_store(&sidecar.dir.join("data"));
    let waiting = support::waiting_jobs(&store).await;
    assert_eq!(waiting.len(), 1);
    let (target, event, body) = &waiting[0];
    assert_eq!(target, "notify");
    assert_eq!(
        (event.id.as_str(), event.webhook.as_str()),
        ("evt_1", "stripe")
    );
    assert_eq!(body, EVENT);
}

#[tokio::test]
async fn the_sign_command_makes_a_request_the_sidecar_accepts() {
    let sidecar = Sidecar::start(&config(""));
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["sign", "--webhook", "stripe", "-c"])
        .arg(sidecar.config_with_bound_ports())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(command.stdin.as_mut().unwrap(), EVENT).unwrap();
    let output = command.wait_with_output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let (name, value) = printed.trim().split_once(": ").unwrap();
    assert_eq!(name, "Stripe-Signature");
    let answer = post(&sidecar, &[("stripe-signature", value)], EVENT).await;
    assert_eq!(answer.status, 202, "{printed}");

    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["sign", "--webhook", "nope", "-c"])
        .arg(sidecar.config_with_bound_ports())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no webhook named nope"));
}

fn stripe_event(n: usize) -> Vec<u8> {
    format!(r#"{{"id":"evt_{n}","type":"payment_intent.succeeded"}}"#).into_bytes()
}

#[tokio::test]
async fn with_redis_down_nothing_is_acknowledged_and_it_recovers() {
    let mut redis = RedisServer::start();
    let sidecar = Sidecar::start(&format!(
        "store: {{ kind: redis, url: {}, prefix: test, unready_after: 1s }}\n{}",
        redis.url(),
        config("")
    ));
    let body = stripe_event(1);
    let signature = stripe_signature(&body);
    let headers = [("stripe-signature", signature.as_str())];
    assert_eq!(post(&sidecar, &headers, &body).await.status, 202);
    redis.kill();
    let body = stripe_event(2);
    let signature = stripe_signature(&body);
    let headers = [("stripe-signature", signature.as_str())];
    let answer = post(&sidecar, &headers, &body).await;
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["x-sidecar-error"], "store_unavailable");
    assert_eq!(answer.headers["retry-after"], "1");
    // Readiness follows the store once the failure lasts (unready_after,
    // 1 s here): a pod that cannot store webhooks leaves the Service's
    // endpoints.
    let readiness = |sidecar: &Sidecar| get(&sidecar.admin_url("/readyz"));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let unready = loop {
        let answer = readiness(&sidecar).await;
        if answer.status == 503 {
            break answer;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still ready with Redis down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        unready.json()["reason"]
            .as_str()
            .unwrap()
            .starts_with("the event store has failed for"),
        "{}",
        unready.text()
    );
    redis.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while readiness(&sidecar).await.status != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "ready again once Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post(&sidecar, &headers, &body).await.status,
        202,
        "the provider's retry is accepted"
    );
}

#[tokio::test]
async fn a_stalled_redis_costs_a_webhook_its_deadline_then_a_503_and_it_recovers() {
    let redis = RedisServer::start();
    let sidecar = Sidecar::start(&format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\n{}",
        redis.url(),
        config("")
    ));
    let signed = |n: usize| {
        let body = stripe_event(n);
        (stripe_signature(&body), body)
    };
    let (signature, body) = signed(1);
    assert_eq!(
        post(&sidecar, &[("stripe-signature", &signature)], &body)
            .await
            .status,
        202
    );
    redis.freeze();
    let (signature, body) = signed(2);
    let started = std::time::Instant::now();
    let answer = post(&sidecar, &[("stripe-signature", &signature)], &body).await;
    let waited = started.elapsed();
    assert_eq!(answer.status, 503, "{}", answer.text());
    assert_eq!(answer.headers["x-sidecar-error"], "store_unavailable");
    // The event store's 2 s deadline: longer than the egress's 250 ms (a
    // Redis fsyncing every write may stall), within every provider's budget.
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    redis.thaw();
    // The script sent before the deadline runs once Redis does, so the
    // provider's retry may find the event stored: a 503 promised nothing,
    // and the retry gets a 2xx either way.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let answer = post(&sidecar, &[("stripe-signature", &signature)], &body).await;
        if answer.status == 202 || answer.status == 200 {
            assert!(
                ["accepted", "duplicate"].contains(&answer.json()["status"].as_str().unwrap()),
                "{}",
                answer.text()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not accepted again: {}",
            answer.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (signature, body) = signed(3);
    let answer = post(&sidecar, &[("stripe-signature", &signature)], &body).await;
    assert_eq!(answer.status, 202, "{}", answer.text());
}

/// Sends 1,000 signed events from 8 concurrent senders and SIGKILLs the
/// sidecar while they run; returns the ids that got a 202.
async fn send_and_kill(sidecar: &mut Sidecar) -> Vec<String> {
    let url = format!("http://{}/webhooks/stripe", sidecar.ingress);
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for sender in 0..8 {
        let (url, sent) = (url.clone(), std::sync::Arc::clone(&sent));
        senders.push(tokio::spawn(async move {
            for i in 0..125 {
                let n = sender * 1000 + i;
                let body = stripe_event(n);
                let signature = stripe_signature(&body);
                let answer =
                    try_send(&url, &[("stripe-signature", signature.as_str())], body).await;
                if answer == Some(202) {
                    sent.lock().unwrap().push(format!("evt_{n}"));
                }
            }
        }));
    }
    // Kill as soon as a hundred are acknowledged: mid-stream whatever the speed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while sent.lock().unwrap().len() < 100 {
        assert!(
            std::time::Instant::now() < deadline,
            "no progress:\n{}",
            sidecar.logs()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sidecar.child.kill().unwrap();
    sidecar.child.wait().unwrap();
    for sender in senders {
        sender.await.unwrap();
    }
    let acknowledged = sent.lock().unwrap().clone();
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 1000,
        "killed mid-stream: {} acknowledged",
        acknowledged.len()
    );
    acknowledged
}

fn assert_each_once(acknowledged: &[String], stored: &[String]) {
    for id in acknowledged {
        assert_eq!(stored.iter().filter(|s| *s == id).count(), 1, "{id}");
    }
}

#[tokio::test]
async fn every_acknowledged_event_survives_a_sigkill_mid_stream_exactly_once() {
    let mut sidecar = Sidecar::start(&config(""));
    let acknowledged = send_and_kill(&mut sidecar).await;
    let store = support::embedded_store(&sidecar.dir.join("data"));
    let stored: Vec<String> = support::waiting_jobs(&store)
        .await
        .into_iter()
        .map(|(_, event, _)| event.id.to_string())
        .collect();
    assert_each_once(&acknowledged, &stored);
}

#[tokio::test]
async fn with_redis_every_acknowledged_event_survives_a_sigkill_exactly_once() {
    let redis = RedisServer::start();
    let mut sidecar = Sidecar::start(&format!(
        "store: {{ kind: redis, url: {}, prefix: test }}\n{}",
        redis.url(),
        config("")
    ));
    let acknowledged = send_and_kill(&mut sidecar).await;
    let stored: Vec<String> = support::waiting_jobs(&redis.event_store())
        .await
        .into_iter()
        .map(|(_, event, _)| event.id.to_string())
        .collect();
    assert_each_once(&acknowledged, &stored);
}

#[tokio::test]
async fn an_ack_override_answers_what_the_provider_reads() {
    let sidecar = Sidecar::start(&config(
        "    ack: { status: 200, content_type: text/xml, body: \"<Response/>\" }\n",
    ));
    let signature = stripe_signature(EVENT);
    let answer = post(&sidecar, &[("stripe-signature", signature.as_str())], EVENT).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["content-type"], "text/xml");
    assert_eq!(answer.text(), "<Response/>");
    sidecar
        .metrics_containing(&[
            "sidecar_webhooks_received_total{outcome=\"accepted\",webhook=\"stripe\"} 1",
        ])
        .await;
}

/// One webhook per kind; `sign` output for each is accepted, twice is a duplicate.
#[tokio::test]
async fn sign_output_is_accepted_for_every_kind() {
    let mut sidecar_config =
        String::from("upstreams:\n  notify: { backends: [127.0.0.1:9] }\nwebhooks:\n");
    let kinds = [
        ("stripe", "{ kind: stripe, secrets: [whsec_test_secret_0123456789] }", "application/json"),
        ("standard", "{ kind: standard, secrets: [whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD] }", "application/json"),
        ("github", "{ kind: github, secrets: [github-secret-0123456789] }", "application/json"),
        ("shopify", "{ kind: shopify, secrets: [shpss_secret_0123456789] }", "application/json"),
        ("slack", "{ kind: slack, secrets: [slack-secret-0123456789] }", "application/json"),
        ("twilio", "{ kind: twilio, secrets: [twilio-token-0123456789], public_url: \"http://hooks.example.net/webhooks/twilio\" }", "application/x-www-form-urlencoded"),
        ("hmac", "{ kind: hmac, secrets: [generic-secret-0123456789], header: X-Signature, algorithm: sha512, encoding: base64, timestamp_header: X-Timestamp, payload: \"{timestamp}:{body}\" }", "application/json"),
    ];
    for (name, verify, _) in &kinds {
        sidecar_config.push_str(&format!(
            "  {name}:\n    path: /webhooks/{name}\n    verify: {verify}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n"
        ));
    }
    let sidecar = Sidecar::start(&sidecar_config);
    for (name, _, content_type) in kinds {
        let body: &[u8] = if name == "twilio" {
            b"MessageSid=SM1&MessageStatus=delivered&Body=Hello+there"
        } else {
            br#"{"id":"evt_1","event_id":"Ev1","type":"booking.confirmed"}"#
        };
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
            .args(["sign", "--webhook", name, "-c"])
            .arg(sidecar.config_with_bound_ports())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(command.stdin.as_mut().unwrap(), body).unwrap();
        let printed = String::from_utf8(command.wait_with_output().unwrap().stdout).unwrap();
        let mut query = None;
        let mut headers = vec![("content-type".to_string(), content_type.to_string())];
        for line in printed.lines() {
            let (header, value) = line.split_once(": ").unwrap();
            match header {
                "URL" => query = value.split_once('?').map(|(_, q)| q.to_string()),
                "Content-Type" => {}
                _ => headers.push((header.to_string(), value.to_string())),
            }
        }
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let url = match &query {
            Some(q) => format!("http://{}/webhooks/{name}?{q}", sidecar.ingress),
            None => format!("http://{}/webhooks/{name}", sidecar.ingress),
        };
        let answer = send("POST", &url, &headers, Bytes::copy_from_slice(body)).await;
        assert_eq!(
            answer.status,
            202,
            "{name}: {} (signed: {printed})",
            answer.text()
        );
        let again = send("POST", &url, &headers, Bytes::copy_from_slice(body)).await;
        assert_eq!(again.status, 200, "{name}: a second copy is a duplicate");
    }
}

#[tokio::test]
async fn twenty_concurrent_copies_are_accepted_once() {
    let sidecar = Sidecar::start(&config(""));
    let signature = stripe_signature(EVENT);
    let url = format!("http://{}/webhooks/stripe", sidecar.ingress);
    let copies: Vec<_> = (0..20)
        .map(|_| {
            let (url, signature) = (url.clone(), signature.clone());
            tokio::spawn(async move {
                try_send(
                    &url,
                    &[("stripe-signature", signature.as_str())],
                    EVENT.to_vec(),
                )
                .await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for copy in copies {
        statuses.push(copy.await.unwrap().unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 202).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        19,
        "{statuses:?}"
    );
}

/// Every reject reason, for every kind, through the running sidecar.
#[tokio::test]
async fn each_kind_names_each_failed_check() {
    use wedsync_sidecar::config::webhooks::{
        HmacAlgorithm, HmacScheme, SignatureEncoding, Verify, VerifyKind,
    };
    use wedsync_sidecar::config::Secret;
    use wedsync_sidecar::webhooks::verify::build;

    let hmac = HmacScheme {
        header: "x-signature".into(),
        algorithm: HmacAlgorithm::Sha256,
        encoding: SignatureEncoding::Hex,
        prefix: String::new(),
        timestamp_header: Some("x-timestamp".into()),
        payload: wedsync_sidecar::config::pattern::PayloadTemplate::parse("{timestamp}.{body}")
            .unwrap(),
    };
    // (name, kind, secret, signature header, timestamped, config line)
    let kinds = [
        ("stripe", VerifyKind::Stripe, "whsec_test_secret_0123456789", "stripe-signature", true,
         "{ kind: stripe, secrets: [whsec_test_secret_0123456789] }"),
        ("standard", VerifyKind::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "webhook-signature", true,
         "{ kind: standard, secrets: [whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD] }"),
        ("github", VerifyKind::Github, "github-secret-0123456789", "x-hub-signature-256", false,
         "{ kind: github, secrets: [github-secret-0123456789] }"),
        ("shopify", VerifyKind::Shopify, "shpss_secret_0123456789", "x-shopify-hmac-sha256", false,
         "{ kind: shopify, secrets: [shpss_secret_0123456789] }"),
        ("slack", VerifyKind::Slack, "slack-secret-0123456789", "x-slack-signature", true,
         "{ kind: slack, secrets: [slack-secret-0123456789] }"),
        ("hmac", VerifyKind::Hmac, "generic-secret-0123456789", "x-signature", true,
         "{ kind: hmac, secrets: [generic-secret-0123456789], header: x-signature, timestamp_header: x-timestamp, payload: \"{timestamp}.{body}\" }"),
    ];
    let mut yaml = String::from("upstreams:\n  notify: { backends: [127.0.0.1:9] }\nwebhooks:\n");
    for (name, _, _, _, _, verify) in &kinds {
        yaml.push_str(&format!(
            "  {name}:\n    path: /webhooks/{name}\n    verify: {verify}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n"
        ));
    }
    let sidecar = Sidecar::start(&yaml);
    let body = br#"{"id":"evt_1","type":"booking.confirmed"}"#;
    for (name, kind, secret, signature_header, timestamped, _) in kinds {
        let scheme = build(&Verify {
            kind,
            secrets: vec![Secret::new(secret)],
            tolerance: Duration::from_secs(300),
            allow_sha1: false,
            public_url: None,
            hmac: (kind == VerifyKind::Hmac).then(|| hmac.clone()),
        })
        .unwrap();
        let url = format!("http://{}/webhooks/{name}", sidecar.ingress);
        let post_signed = |signed: &wedsync_sidecar::webhooks::verify::Signed,
                           body: &[u8],
                           drop: Option<&str>,
                           garble: Option<&str>| {
            let headers: Vec<(String, String)> = signed
                .headers
                .iter()
                .filter(|(h, _)| Some(h.to_ascii_lowercase().as_str()) != drop)
                .map(|(h, v)| {
                    let garbled = garble
                        .filter(|g| h.eq_ignore_ascii_case(g))
                        .map(|_| "###".to_string());
                    (h.clone(), garbled.unwrap_or_else(|| v.clone()))
                })
                .collect();
            let (url, body) = (url.clone(), Bytes::copy_from_slice(body));
            async move {
                let headers: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(h, v)| (h.as_str(), v.as_str()))
                    .collect();
                send("POST", &url, &headers, body).await
            }
        };
        let signed = scheme.sign(body, now());
        let mut cases = vec![
            (
                post_signed(&signed, b"{\"id\":\"evt_2\"}", None, None).await,
                "signature_mismatch",
            ),
            (
                post_signed(&signed, body, Some(signature_header), None).await,
                "missing_signature",
            ),
            (
                post_signed(&signed, body, None, Some(signature_header)).await,
                "malformed_signature",
            ),
        ];
        if timestamped {
            let stale = scheme.sign(body, now() - 3600);
            cases.push((
                post_signed(&stale, body, None, None).await,
                "timestamp_out_of_tolerance",
            ));
            let future = scheme.sign(body, now() + 3600);
            cases.push((
                post_signed(&future, body, None, None).await,
                "timestamp_out_of_tolerance",
            ));
        }
        for (answer, reason) in cases {
            assert_eq!(answer.status, 401, "{name} {reason}: {}", answer.text());
            assert_eq!(answer.json()["detail"], reason, "{name}");
        }
        let other_secret = build(&Verify {
            kind,
            secrets: vec![Secret::new(if kind == VerifyKind::Standard {
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            } else {
                "a-different-secret-0123"
            })],
            tolerance: Duration::from_secs(300),
            allow_sha1: false,
            public_url: None,
            hmac: (kind == VerifyKind::Hmac).then(|| hmac.clone()),
        })
        .unwrap();
        let wrong = other_secret.sign(body, now());
        assert_eq!(
            post_signed(&wrong, body, None, None).await.json()["detail"],
            "signature_mismatch",
            "{name}"
        );
        assert_eq!(
            post_signed(&signed, body, None, None).await.status,
            202,
            "{name}"
        );
    }
}

/// Twilio signs the URL it was configured with, so its checks differ from
/// the others': the public URL (never the request's Host), the query
/// string, the form parameters and, for JSON, `bodySHA256`.
#[tokio::test]
async fn twilio_refuses_what_was_signed_for_another_url_body_or_key() {
    use wedsync_sidecar::webhooks::verify::twilio::Twilio;

    const TOKEN: &str = "twilio-token-0123456789";
    const PUBLIC_URL: &str = "https://hooks.example.net/webhooks/twilio";
    let sidecar = Sidecar::start(&format!(
        "upstreams:\n  notify: {{ backends: [127.0.0.1:9] }}\nwebhooks:\n  twilio:\n    path: /webhooks/twilio\n    verify: {{ kind: twilio, secrets: [{TOKEN}], public_url: \"{PUBLIC_URL}\" }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n"
    ));
    let signer = |url: &str, token: &str| Twilio {
        keys: vec![token.as_bytes().to_vec()],
        public_url: url.into(),
    };
    // Posts `body` with the signed headers, to the signed query string plus
    // `added` (a parameter the signature did not cover).
    let post_adding =
        |signed: wedsync_sidecar::webhooks::verify::Signed, body: &'static [u8], added: &str| {
            let signed_query = signed
                .url
                .as_deref()
                .and_then(|u| u.split_once('?'))
                .map(|(_, q)| q.to_string());
            let query = match (signed_query, added) {
                (None, "") => String::new(),
                (None, added) => format!("?{added}"),
                (Some(q), "") => format!("?{q}"),
                (Some(q), added) => format!("?{q}&{added}"),
            };
            let url = format!("http://{}/webhooks/twilio{query}", sidecar.ingress);
            async move {
                let headers: Vec<(&str, &str)> = signed
                    .headers
                    .iter()
                    .map(|(h, v)| (h.as_str(), v.as_str()))
                    .collect();
                send("POST", &url, &headers, Bytes::from_static(body)).await
            }
        };
    let post = |signed, body| post_adding(signed, body, "");
    let form: &[u8] = b"MessageSid=SM1&MessageStatus=delivered&Body=See+you+at+the+venue";
    let tampered: &[u8] = b"MessageSid=SM1&MessageStatus=delivered&Body=See+you+at+the+pub";
    let good = signer(PUBLIC_URL, TOKEN);

    let refusals = [
        (
            post(good.sign(form, 0), tampered).await,
            "signature_mismatch",
            "a changed parameter",
        ),
        (
            post(
                signer("https://attacker.example/webhooks/twilio", TOKEN).sign(form, 0),
                form,
            )
            .await,
            "signature_mismatch",
            "signed for another URL",
        ),
        (
            post(
                signer(PUBLIC_URL, "another-token-0123456789").sign(form, 0),
                form,
            )
            .await,
            "signature_mismatch",
            "signed with another token",
        ),
        (
            post_adding(good.sign(form, 0), form, "From=x").await,
            "signature_mismatch",
            "a query string that was not signed",
        ),
        (
            post(good.sign(br#"{"sid":"SM1"}"#, 0), br#"{"sid":"SM2"}"#).await,
            "signature_mismatch",
            "a JSON body that does not match bodySHA256",
        ),
    ];
    for (answer, reason, case) in refusals {
        assert_eq!(answer.status, 401, "{case}: {}", answer.text());
        assert_eq!(answer.json()["detail"], reason, "{case}");
    }
    let mut unsigned = good.sign(form, 0);
    unsigned.headers.retain(|(h, _)| h != "X-Twilio-Signature");
    assert_eq!(
        post(unsigned, form).await.json()["detail"],
        "missing_signature"
    );
    let mut garbled = good.sign(form, 0);
    garbled.headers[0].1 = "not base64!".into();
    assert_eq!(
        post(garbled, form).await.json()["detail"],
        "malformed_signature"
    );

    // What Twilio itself would send passes, with or without the default port.
    assert_eq!(post(good.sign(form, 0), form).await.status, 202);
    let with_port = signer("https://hooks.example.net:443/webhooks/twilio", TOKEN);
    let other_form: &[u8] = b"MessageSid=SM2&MessageStatus=sent";
    assert_eq!(
        post(with_port.sign(other_form, 0), other_form).await.status,
        202
    );
    let json: &[u8] = br#"{"sid":"SM3","status":"delivered"}"#;
    assert_eq!(post(good.sign(json, 0), json).await.status, 202);
    sidecar
        .metrics_containing(&[
            "sidecar_webhook_rejections_total{reason=\"signature_mismatch\",webhook=\"twilio\"} 5",
            "sidecar_webhook_rejections_total{reason=\"missing_signature\",webhook=\"twilio\"} 1",
            "sidecar_webhooks_received_total{outcome=\"accepted\",webhook=\"twilio\"} 3",
        ])
        .await;
}

/// A captured request resent with a new, unsigned id header is the same
/// event (200 duplicate), for every provider whose id header lies outside
/// its signature; the provider's own id is still what deliveries carry.
#[tokio::test]
async fn an_unsigned_id_header_never_makes_a_replay_a_new_event() {
    use wedsync_sidecar::signing::standard::Signer;
    use wedsync_sidecar::webhooks::verify::github::Github;
    use wedsync_sidecar::webhooks::verify::shopify::Shopify;
    use wedsync_sidecar::webhooks::verify::twilio::Twilio;
    let public_url = "https://hooks.example.net/webhooks/twilio";
    let body = format!(
        "upstreams:\n  notify: {{ backends: [127.0.0.1:9] }}\nwebhooks:\n  standard:\n    path: /standard\n    verify: {{ kind: standard, secrets: [whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n  github:\n    path: /github\n    verify: {{ kind: github, secrets: [github-secret-0123456789] }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n  shopify:\n    path: /shopify\n    verify: {{ kind: shopify, secrets: [shpss_secret_0123456789] }}\n    routes: [{{ events: [\"orders/*\"], targets: [notify] }}]\n  twilio:\n    path: /twilio\n    verify: {{ kind: twilio, secrets: [twilio-token-0123456789], public_url: \"{public_url}\" }}\n    routes: [{{ events: [\"*\"], targets: [notify] }}]\n"
    );
    let sidecar = Sidecar::start(&body);
    let url = |path: &str| format!("http://{}{path}", sidecar.ingress);
    let post = |path: String, headers: Vec<(String, String)>, body: &'static [u8]| async move {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        send("POST", &path, &headers, Bytes::from_static(body)).await
    };

    // Standard Webhooks signed with svix-* headers, plus a forged webhook-id.
    let standard = Signer::new(
        wedsync_sidecar::config::webhooks::secret_key_bytes(
            wedsync_sidecar::config::webhooks::VerifyKind::Standard,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        )
        .unwrap(),
    );
    let payload: &[u8] = br#"{"type":"email.delivered"}"#;
    let signed: Vec<(String, String)> = standard
        .headers("msg_signed", now(), payload)
        .into_iter()
        .map(|(n, v)| (n.replace("webhook-", "svix-"), v))
        .collect();
    let mut statuses = Vec::new();
    for forged in ["msg_a", "msg_b", "msg_c"] {
        let mut headers = signed.clone();
        headers.push(("webhook-id".into(), forged.into()));
        let answer = post(url("/standard"), headers, payload).await;
        assert_eq!(answer.json()["id"], "msg_signed", "the id that was signed");
        statuses.push(answer.status);
    }
    assert_eq!(statuses, [202, 200, 200]);

    // GitHub: the same signed body with a new X-GitHub-Delivery.
    let github = Github {
        keys: vec![b"github-secret-0123456789".to_vec()],
        allow_sha1: false,
    };
    let payload: &[u8] = br#"{"action":"opened","number":7}"#;
    let signature = github.sign(payload, 0).headers[0].1.clone();
    let mut answers = Vec::new();
    for delivery in ["guid-1", "guid-2"] {
        let headers = vec![
            ("x-hub-signature-256".to_string(), signature.clone()),
            ("x-github-delivery".to_string(), delivery.to_string()),
            ("x-github-event".to_string(), "issues".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
        ];
        answers.push(post(url("/github"), headers, payload).await);
    }
    assert_eq!((answers[0].status, answers[1].status), (202, 200));
    assert_eq!(
        answers[1].json()["id"],
        "guid-2",
        "the provider's id is kept"
    );

    // Shopify: a new webhook id and another topic do not reroute it.
    let shopify = Shopify {
        keys: vec![b"shpss_secret_0123456789".to_vec()],
    };
    let payload: &[u8] = br#"{"id":820982911946154508,"total":"10.00"}"#;
    let signature = shopify.sign(payload, 0).headers[0].1.clone();
    let mut statuses = Vec::new();
    for (id, topic) in [("w-1", "orders/create"), ("w-2", "orders/cancelled")] {
        let headers = vec![
            ("x-shopify-hmac-sha256".to_string(), signature.clone()),
            ("x-shopify-webhook-id".to_string(), id.to_string()),
            ("x-shopify-topic".to_string(), topic.to_string()),
        ];
        statuses.push(post(url("/shopify"), headers, payload).await.status);
    }
    assert_eq!(statuses, [202, 200]);

    // Twilio: another idempotency token, and the content type in other case.
    let twilio = Twilio {
        keys: vec![b"twilio-token-0123456789".to_vec()],
        public_url: public_url.into(),
    };
    let payload: &[u8] = b"MessageSid=SM9&MessageStatus=delivered";
    let signature = twilio.sign(payload, 0).headers[0].1.clone();
    let mut statuses = Vec::new();
    for (token, content_type) in [
        ("tok-1", "application/x-www-form-urlencoded"),
        ("tok-2", "application/x-www-form-urlencoded"),
        ("tok-3", "Application/X-WWW-Form-Urlencoded"),
    ] {
        let headers = vec![
            ("x-twilio-signature".to_string(), signature.clone()),
            ("i-twilio-idempotency-token".to_string(), token.to_string()),
            ("content-type".to_string(), content_type.to_string()),
        ];
        statuses.push(post(url("/twilio"), headers, payload).await.status);
    }
    assert_eq!(statuses, [202, 200, 200]);
    sidecar
        .metrics_containing(&[
            "sidecar_webhooks_received_total{outcome=\"accepted\",webhook=\"twilio\"} 1",
            "sidecar_webhooks_received_total{outcome=\"duplicate\",webhook=\"standard\"} 2",
        ])
        .await;
}

/// A signed event that serde_json cannot read whole (nested past 128
/// levels, a number out of range, a lone surrogate): the provider will not
/// send other bytes, so its id, type and context are read all the same and
/// it is routed by its type, never delivered untyped to a `*` route or
/// dead-lettered as unrouted.
#[tokio::test]
async fn a_signed_event_json_cannot_read_whole_keeps_its_type_context_and_route() {
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let sidecar = Sidecar::start(
        &Yaml::new()
            .upstream("payments", format!("{{ backends: [{}] }}", target.addr))
            .stripe_webhook(&[
                "routes: [{ events: [\"payment_intent.*\"], targets: [payments] }]",
                "context: { wedding_id: /data/object/metadata/wedding_id }",
            ])
            .build(),
    );
    let bodies = [
        format!(
            r#"{{"id":"evt_deep","type":"payment_intent.succeeded","data":{{"object":{{"metadata":{{"wedding_id":"w-1"}},"x":{}1{}}}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        ),
        r#"{"id":"evt_big","type":"payment_intent.succeeded","data":{"object":{"amount":1e400,"metadata":{"wedding_id":"w-2"}}}}"#.to_string(),
        r#"{"id":"evt_surrogate","type":"payment_intent.succeeded","data":{"object":{"note":"\ud800","metadata":{"wedding_id":"w-3"}}}}"#.to_string(),
    ];
    for body in &bodies {
        assert!(serde_json::from_str::<serde_json::Value>(body).is_err());
        let signature = stripe_signature_with(SECRET, body.as_bytes());
        let answer = send(
            "POST",
            &format!("http://{}/webhooks/stripe", sidecar.ingress),
            &[("stripe-signature", signature.as_str())],
            Bytes::from(body.clone()),
        )
        .await;
        assert_eq!(answer.status, 202, "{}", answer.text());
    }
    eventually(SETTLE, "all three delivered", || {
        target.requests().len() == 3
    })
    .await;
    let mut seen: Vec<(String, String, String)> = target
        .requests()
        .iter()
        .map(|s| {
            (
                s.headers["x-event-id"].clone(),
                s.headers["x-event-type"].clone(),
                s.headers["x-wedding-id"].clone(),
            )
        })
        .collect();
    seen.sort();
    let expected = [
        ("evt_big", "w-2"),
        ("evt_deep", "w-1"),
        ("evt_surrogate", "w-3"),
    ];
    for ((id, kind, wedding), (want_id, want_wedding)) in seen.iter().zip(expected) {
        assert_eq!(
            (id.as_str(), kind.as_str(), wedding.as_str()),
            (want_id, "payment_intent.succeeded", want_wedding)
        );
    }
}
