//! `wedsync-sidecar inject` through the real binary: one golden file per
//! workload kind (`tests/inject/<kind>.yaml` -> `<kind>.injected.yaml`,
//! validated against Kubernetes' schemas by scripts/validate-k8s),
//! injecting twice equals injecting once, refusals are clear, and the k8s
//! example's deployment is what inject makes of its app.
//! `UPDATE_GOLDEN=1 cargo test --test inject` rewrites the golden files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const IMAGE: &str = "registry.example/wedsync-sidecar:1.0";
const KINDS: [&str; 7] = [
    "deployment",
    "statefulset",
    "daemonset",
    "job",
    "cronjob",
    "pod",
    "list",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn inject(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .arg("inject")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn injected(input: &[u8]) -> String {
    let output = inject(&["-c", "k8s/base/sidecar.yaml", "--image", IMAGE], input);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn each_workload_kind_matches_its_golden_file_and_a_second_injection_changes_nothing() {
    let dir = root().join("tests/inject");
    for kind in KINDS {
        let out = injected(read(&dir.join(format!("{kind}.yaml"))).as_bytes());
        let golden = dir.join(format!("{kind}.injected.yaml"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &out).unwrap();
        }
        assert_eq!(
            out,
            read(&golden),
            "{kind}: differs from {}",
            golden.display()
        );
        assert_eq!(
            injected(out.as_bytes()),
            out,
            "{kind}: injecting twice changed it"
        );
    }
}

#[test]
fn the_examples_deployment_is_what_inject_makes_of_its_app() {
    let app = read(&root().join("k8s/base/app.yaml"));
    let output = inject(&["-c", "k8s/base/sidecar.yaml", "k8s/base/app.yaml"], b"");
    assert!(output.status.success());
    let deployment = read(&root().join("k8s/base/deployment.yaml"));
    let without_header: String = deployment
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        without_header,
        "k8s/base/deployment.yaml is stale: regenerate it from app.yaml"
    );
    assert!(app.contains("kind: Deployment"));
}

#[test]
fn another_image_under_the_sidecars_name_and_broken_yaml_are_refused() {
    let once = injected(read(&root().join("tests/inject/pod.yaml")).as_bytes());
    let output = inject(
        &[
            "-c",
            "k8s/base/sidecar.yaml",
            "--image",
            "wedsync-sidecar:9.9",
        ],
        once.as_bytes(),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("document 1: the pod already has a container named wedsync-sidecar with image \"registry.example/wedsync-sidecar:1.0\""),
        "{stderr}"
    );
    let output = inject(
        &["-c", "k8s/base/sidecar.yaml"],
        b"kind: Pod\n---\nspec: [unclosed\n",
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("document 2: not valid YAML"), "{stderr}");
    assert!(output.stdout.is_empty(), "nothing half-written");
}

#[test]
fn a_loopback_admin_listener_is_warned_about() {
    let output = inject(
        &["-c", "conf/sidecar.yaml"],
        read(&root().join("tests/inject/pod.yaml")).as_bytes(),
    );
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains(
        "warning: listen.admin is 127.0.0.1:9901; kubelet probes and Prometheus reach the pod IP"
    ));
}

#[test]
fn the_in_cluster_config_is_valid_once_its_secrets_are_mounted() {
    let dir = std::env::temp_dir().join(format!("sidecar-k8s-config-{}", std::process::id()));
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    for (name, value) in [
        ("admin-token", "admin-token-0123456789"),
        ("stripe-secret-key", "sk_test_0123456789"),
        ("stripe-webhook-secret", "whsec_test_secret_0123456789"),
        (
            "delivery-signing-secret",
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        ),
    ] {
        std::fs::write(secrets.join(name), value).unwrap();
    }
    let config = read(&root().join("k8s/base/sidecar.yaml")).replace(
        "/var/run/secrets/wedsync-sidecar",
        &secrets.display().to_string(),
    );
    let path = dir.join("sidecar.yaml");
    std::fs::write(&path, config).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_wedsync-sidecar"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Without `--image`, the sidecar's image is this binary's own version,
/// as the README and `--help` say.
#[test]
fn the_default_image_is_this_binarys_version() {
    let input = read(&root().join("tests/inject/pod.yaml"));
    let output = inject(&["-c", "k8s/base/sidecar.yaml"], input.as_bytes());
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let image = format!("wedsync-sidecar:{}", env!("CARGO_PKG_VERSION"));
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(
        out.contains(&format!("image: \"{image}\"")) || out.contains(&format!("image: {image}")),
        "{out}"
    );
    let readme = read(&root().join("README.md"));
    assert!(readme.contains("`--image` defaults to `wedsync-sidecar:VERSION`"));
}
