//! Black-box tests of what operators meet first: Pingora's own log lines in
//! the sidecar's log (both formats, filtered by RUST_LOG), metric labels that
//! survive the Prometheus Operator, process and build metrics, series that
//! go with the service or group a reload removed, and the command line's
//! schema, completions, man page, `dlq list -o json` and `$SIDECAR_CONFIG`.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
}

fn stdout_of(args: &[&str]) -> String {
    let output = binary().args(args).output().unwrap();
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn pingoras_own_log_lines_reach_the_log_in_both_formats() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new().service("stripe", "/stripe", &provider.url(), &[]);
    // Pingora logs "Server starting" at info through the `log` crate.
    let text = Sidecar::start_with_env(&yaml.build(), &[("RUST_LOG", "info")]);
    eventually(SETTLE, "Pingora's startup line in the text log", || {
        text.logs()
            .lines()
            .any(|l| l.contains("pingora_core") && l.contains("Server starting"))
    })
    .await;
    let json = Sidecar::start_with_args(
        &yaml.build(),
        &[("RUST_LOG", "info")],
        &["--log-format", "json"],
    );
    eventually(SETTLE, "Pingora's startup line as JSON", || {
        json.logs().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                v["message"] == "Server starting"
                    && v["target"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("pingora_core"))
            })
        })
    })
    .await;
    // The default filter (no RUST_LOG) keeps Pingora at warn.
    let quiet = Sidecar::start_with_env(&yaml.build(), &[("RUST_LOG", "")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !quiet.logs().contains("Server starting"),
        "{}",
        quiet.logs()
    );
}

#[tokio::test]
async fn labels_survive_the_operator_and_process_and_build_metrics_are_there() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let yaml = Yaml::new().service("stripe", "/stripe", &provider.url(), &[]);
    let sidecar = Sidecar::start(&yaml.build());
    let url = format!("http://{}/stripe/v1/x", sidecar.egress);
    assert_eq!(
        send("GET", &url, &[], bytes::Bytes::new()).await.status,
        200
    );
    let metrics = sidecar
        .metrics_until("the request counted", WITHIN, |m| {
            m.contains("sidecar_egress_requests_total{code=\"200\",egress_service=\"stripe\"} 1")
        })
        .await;
    // No label of ours is one the Operator sets on every target.
    for line in metrics.lines().filter(|l| l.starts_with("sidecar_")) {
        for reserved in [
            "service",
            "namespace",
            "pod",
            "container",
            "endpoint",
            "job",
            "instance",
        ] {
            assert!(
                !line.contains(&format!("{{{reserved}=\""))
                    && !line.contains(&format!(",{reserved}=\"")),
                "{reserved} in {line}"
            );
        }
    }
    assert!(
        metrics.contains(&format!(
            "sidecar_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    for process in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            metrics.contains(&format!("\n{process} ")),
            "{process} in {metrics}"
        );
    }
}

/// How long a metric may take to appear or go.
const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_service_or_group_a_reload_removes_takes_its_series_along() {
    let provider = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let backend = MockServer::start(|_| MockAnswer::ok("{}")).await;
    let stripe = format!(
        "  stripe:\n    route: /stripe\n    upstream: {}\n    circuit_breaker: {{ failure_threshold: 5 }}\n",
        provider.url()
    );
    let group = format!("upstreams:\n  notify: {{ backends: [{}] }}\n", backend.addr);
    let notify = "  notify:\n    route: /notify\n    group: notify\n";
    let sidecar = Sidecar::start(&format!("{group}services:\n{stripe}{notify}"));
    for path in ["/stripe/v1/x", "/notify/x"] {
        let url = format!("http://{}{path}", sidecar.egress);
        assert_eq!(
            send("GET", &url, &[], bytes::Bytes::new()).await.status,
            200
        );
    }
    sidecar
        .metrics_until("every series before the reloads", WITHIN, |m| {
            m.contains("sidecar_circuit_state{egress_service=\"stripe\"}")
                && m.contains("egress_service=\"notify\"")
                && m.contains("upstream=\"notify\"")
        })
        .await;
    sidecar.edit_config(|text| text.replace(&stripe, ""));
    sidecar
        .metrics_until("the removed service's series are gone", WITHIN, |m| {
            !m.contains("egress_service=\"stripe\"") && m.contains("egress_service=\"notify\"")
        })
        .await;
    sidecar.edit_config(|text| {
        text.replace(notify, "")
            .replace(&group, "")
            .replace("services:\n", "")
    });
    sidecar
        .metrics_until("the removed group's series are gone", WITHIN, |m| {
            !m.contains("upstream=\"notify\"") && !m.contains("egress_service=\"notify\"")
        })
        .await;
}

#[test]
fn the_cli_prints_its_schema_completions_and_man_page() {
    let schema: serde_json::Value = serde_json::from_str(&stdout_of(&["schema"])).unwrap();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef wedsync-sidecar"),
        ("fish", "complete -c wedsync-sidecar"),
    ] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("publish"), "{shell} completes subcommands");
    }
    let man = stdout_of(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH"), "{man}");
    assert!(
        man.contains("wedsync\\-sidecar") && man.contains("SIDECAR_CONFIG"),
        "{man}"
    );
}

#[test]
fn sidecar_config_names_the_config_file() {
    let dir = unique_dir("env-config");
    let path = dir.join("elsewhere.yaml");
    std::fs::write(
        &path,
        "services:\n  s:\n    route: /s\n    upstream: http://127.0.0.1:1\n",
    )
    .unwrap();
    let output = binary()
        .arg("check")
        .env("SIDECAR_CONFIG", &path)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("elsewhere.yaml: OK"), "{text}");
}

#[tokio::test]
async fn dlq_list_prints_json_for_scripts() {
    // An event no route takes is a dead letter (unrouted) at once.
    let yaml = Yaml::new()
        .with("admin: { token: admin-token-0123456789 }")
        .upstream("notify", "{ backends: [127.0.0.1:9] }")
        .stripe_webhook(&["routes: [{ events: [\"charge.*\"], targets: [notify] }]"]);
    let sidecar = Sidecar::start(&yaml.build());
    assert_eq!(post_stripe(&sidecar, "evt_unrouted").await.status, 202);
    let config = sidecar.config_with_bound_ports();
    let list = move || {
        binary()
            .args(["dlq", "list", "-o", "json", "-c"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let output = tokio::task::spawn_blocking(list).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    let page: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["event_id"], "evt_unrouted");
    assert_eq!(items[0]["reason"], "unrouted");
}
