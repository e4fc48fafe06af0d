//! The alert rules and the dashboard, executed by a real Prometheus (the
//! Debian package scripts/test installs): it scrapes a running sidecar and
//! loads the rules of the PrometheusRule; the scrape is up, the sidecar's
//! series are there, every rule evaluates healthily, and every dashboard
//! expression parses and runs.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const RULES: &str = "k8s/components/monitoring/prometheusrule.yaml";
const DASHBOARD: &str = "k8s/components/monitoring/grafana-dashboard.json";

struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The PrometheusRule's groups as a plain rule file.
fn rule_file(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(RULES)).unwrap();
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let mut groups = serde_yaml_ng::Mapping::new();
    groups.insert("groups".into(), rule["spec"]["groups"].clone());
    let path = dir.join("rules.yaml");
    std::fs::write(&path, serde_yaml_ng::to_string(&groups).unwrap()).unwrap();
    path
}

fn start_prometheus(scrape: std::net::SocketAddr) -> Prometheus {
    let dir = unique_dir("prometheus");
    let rules = rule_file(&dir);
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [{}]\nscrape_configs:\n  - job_name: sidecar\n    static_configs:\n      - targets: [\"{scrape}\"]\n        labels: {{ namespace: wedding, pod: app-1 }}\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .expect("prometheus (Debian's prometheus package; scripts/test installs it)");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn query(prometheus: &Prometheus, expr: &str) -> serde_json::Value {
    let encoded: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    get(&format!("{}/api/v1/query?query={encoded}", prometheus.url))
        .await
        .json()
}

async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_sidecar_and_runs_every_rule_and_panel() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let target = MockServer::start(|_| MockAnswer::status(204, "")).await;
    let yaml = Yaml::new()
        .upstream("notify", format!("{{ backends: [{}] }}", target.addr))
        .service("stripe", "/stripe", &provider.url(), &[])
        .stripe_webhook(&["routes: [{ events: [\"*\"], targets: [notify] }]"]);
    let sidecar = Sidecar::start(&yaml.build());
    let answer = send(
        "GET",
        &format!("http://{}/stripe/v1/x", sidecar.egress),
        &[],
        bytes::Bytes::new(),
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(post_stripe(&sidecar, "evt_prom").await.status, 202);

    let prometheus = start_prometheus(sidecar.admin);
    until("prometheus ready", Duration::from_secs(30), async || {
        try_get(&format!("{}/-/ready", prometheus.url)).await == Some(200)
    })
    .await;
    until("the scrape is up", Duration::from_secs(30), async || {
        query(&prometheus, "up{job=\"sidecar\"} == 1").await["data"]["result"]
            .as_array()
            .is_some_and(|r| r.len() == 1)
    })
    .await;
    for series in [
        "sidecar_build_info",
        "sidecar_egress_requests_total{egress_service=\"stripe\",code=\"200\"}",
        "sidecar_webhooks_received_total{webhook=\"stripe\",outcome=\"accepted\"}",
        "process_resident_memory_bytes",
    ] {
        let result = query(&prometheus, series).await;
        assert_eq!(
            result["data"]["result"].as_array().map(Vec::len),
            Some(1),
            "{series}: {result}"
        );
    }

    // Every rule evaluated, none in error.
    until(
        "every rule evaluated healthily",
        Duration::from_secs(30),
        async || {
            let rules = get(&format!("{}/api/v1/rules", prometheus.url))
                .await
                .json();
            let all: Vec<&serde_json::Value> = rules["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            for rule in &all {
                assert_ne!(rule["health"], "err", "{rule}");
            }
            !all.is_empty() && all.iter().all(|r| r["health"] == "ok")
        },
    )
    .await;

    // Every dashboard expression parses and runs (the variables filled in
    // as Grafana would).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(DASHBOARD)).unwrap(),
    )
    .unwrap();
    let mut expressions = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", ".*")
                .replace("$pod", ".*")
                .replace("$__rate_interval", "1m");
            let result = query(&prometheus, &expr).await;
            assert_eq!(result["status"], "success", "{expr}: {result}");
            expressions += 1;
        }
    }
    assert!(expressions > 20);
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = variable["query"].as_str() {
            if let Some(inner) = q.strip_prefix("label_values(") {
                let metric = inner
                    .rsplit_once(',')
                    .unwrap()
                    .0
                    .replace("$namespace", ".*");
                let result = query(&prometheus, &metric).await;
                assert_eq!(result["status"], "success", "{q}: {result}");
                assert!(
                    !result["data"]["result"].as_array().unwrap().is_empty(),
                    "the {} variable finds values: {q}",
                    variable["name"]
                );
            }
        }
    }
}
