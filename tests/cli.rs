//! The command line: `check` lists every error and exits 1, or summarizes.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let path = std::env::temp_dir().join(format!(
        "sidecar-check-{}-{}.yaml",
        std::process::id(),
        yaml.len()
    ));
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let (code, _, stderr) = check("listen:\n  egress: nowhere\nservices:\n  s:\n    route: s\n    upstream: https://x.example\n    timeout: soon\n");
    assert_eq!(code, 1);
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines[0].ends_with(": 3 configuration errors"), "{stderr}");
    assert!(
        lines[1].starts_with("  listen.egress: invalid address \"nowhere\""),
        "{stderr}"
    );
    assert!(
        lines[2].starts_with("  services.s.route: invalid route \"s\""),
        "{stderr}"
    );
    assert!(
        lines[3].starts_with("  services.s.timeout: invalid duration \"soon\""),
        "{stderr}"
    );
    assert!(lines[3].ends_with("(line 7, column 14)"), "{stderr}");
}

#[test]
fn check_summarizes_a_valid_file_and_exits_0() {
    let (code, stdout, _) = check("services:\n  stripe:\n    route: /stripe\n    upstream: https://api.stripe.com\n    auth: { kind: bearer, token: sk_test_x }\n");
    assert_eq!(code, 0);
    assert!(stdout.contains(": OK"), "{stdout}");
    assert!(stdout.contains("stripe                 /stripe -> https://api.stripe.com (bearer token; connect timeout 5s, timeout 30s)"), "{stdout}");
    assert!(!stdout.contains("sk_test_x"));
}

#[test]
fn the_shipped_demo_config_is_valid() {
    let out = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/sidecar.yaml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_port_is_one_clear_error_with_exit_code_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let path = std::env::temp_dir().join(format!("sidecar-port-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "listen: {{ egress: 127.0.0.1:{port}, ingress: 127.0.0.1:0, admin: 127.0.0.1:1 }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (egress listener)"
        )),
        "{stderr}"
    );
}

#[test]
fn check_refuses_what_would_fail_at_run_time_naming_path_and_line() {
    let (code, _, stderr) = check("upstreams:\n  u: { backends: [127.0.0.1:1], health_check: { path: \"/health z\" } }\nwebhooks:\n  w:\n    path: /w\n    verify: { kind: github, secrets: [0123456789abcdef] }\n    routes: [{ events: [\"*\"], targets: [u] }]\n    delivery: { path: \"/events/a b\" }\nadmin: { token: \"\" }\n");
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("upstreams.u.health_check.path: invalid path \"/health z\""),
        "{stderr}"
    );
    assert!(
        stderr.contains("webhooks.w.delivery.path: invalid path \"/events/a b\""),
        "{stderr}"
    );
    assert!(stderr.contains("(line 8, column"), "{stderr}");
    assert!(
        stderr.contains("admin.token: token is 0 bytes long"),
        "{stderr}"
    );
}

#[test]
fn an_error_about_a_secret_names_its_reference_not_its_value() {
    let path = std::env::temp_dir().join(format!("sidecar-secret-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        "services:\n  s:\n    route: /s\n    upstream: ${env:TEST_UPSTREAM_URL}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["check", "-c"])
        .arg(&path)
        .env(
            "TEST_UPSTREAM_URL",
            "https://admin:pa55word-do-not-show@api.example",
        )
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("pa55word"), "{stderr}");
    assert!(stderr.contains("${env:TEST_UPSTREAM_URL}"), "{stderr}");
}
