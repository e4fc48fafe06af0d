//! Webhook verification cost per kind for 1 KiB and 64 KiB bodies, next to
//! a plain HMAC-SHA256 of the same bytes: the difference is parsing.
//! Run: `cargo bench --bench verify` (criterion prints throughput in MiB/s).

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use wedsync_sidecar::config::webhooks::{Verify, VerifyKind};
use wedsync_sidecar::config::Secret;
use wedsync_sidecar::signing::mac::{hmac, Algorithm};
use wedsync_sidecar::webhooks::verify::{build, Inbound};

const NOW: u64 = 1_700_000_000;

fn verify_config(kind: VerifyKind, secret: &str) -> Verify {
    Verify {
        kind,
        secrets: vec![Secret::new(secret)],
        tolerance: Duration::from_secs(300),
        allow_sha1: false,
        public_url: Some("https://hooks.example.net/webhooks/twilio".into()),
        hmac: None,
    }
}

fn kinds(c: &mut Criterion) {
    let cases = [
        (VerifyKind::Stripe, "whsec_bench_secret_0123456789"),
        (
            VerifyKind::Standard,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ),
        (VerifyKind::Github, "github-bench-secret-0123"),
        (VerifyKind::Shopify, "shpss_bench_secret_0123"),
        (VerifyKind::Slack, "slack-bench-secret-0123456"),
        (VerifyKind::Twilio, "twilio-bench-token-0123"),
    ];
    for size in [1024usize, 64 * 1024] {
        let mut group = c.benchmark_group(format!("verify {} KiB", size / 1024));
        group.throughput(Throughput::Bytes(size as u64));
        let body =
            format!("{{\"id\":\"evt_1\",\"pad\":\"{}\"}}", "x".repeat(size - 24)).into_bytes();
        let key = b"whsec_bench_secret_0123456789".to_vec();
        group.bench_function("plain HMAC-SHA256", |b| {
            b.iter(|| hmac(Algorithm::Sha256, &key, &[&body]))
        });
        for (kind, secret) in cases {
            let scheme = build(&verify_config(kind, secret)).unwrap();
            let signed = scheme.sign(&body, NOW);
            let mut headers = http::HeaderMap::new();
            for (name, value) in &signed.headers {
                headers.insert(
                    http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            let query = signed
                .url
                .as_deref()
                .and_then(|u| u.split_once('?'))
                .map(|(_, q)| q.to_string());
            let request = Inbound {
                headers: &headers,
                body: &body,
                query: query.as_deref(),
                now: NOW,
            };
            assert!(scheme.verify(&request).is_ok(), "{kind:?}");
            group.bench_with_input(
                BenchmarkId::new("verify", format!("{kind:?}")),
                &request,
                |b, r| b.iter(|| scheme.verify(r)),
            );
        }
        group.finish();
    }
}

criterion_group!(benches, kinds);
criterion_main!(benches);
