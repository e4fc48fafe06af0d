//! `wedsync-sidecar inject`: adds the sidecar to Kubernetes workloads.
//!
//! Every pod template (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
//! CronJob, Pod, and each item of a List) gets the sidecar as a native
//! sidecar (an init container with `restartPolicy: Always`, Kubernetes
//! 1.29+: it starts before the app and stops after it), its config from a
//! ConfigMap and its credentials from a Secret (mounted as files, read with
//! `${file:...}`), a volume for the embedded store, probes on the admin
//! port, resources, a restrictive security context, and the Prometheus
//! scrape annotations. Other documents pass through unchanged.
//!
//! Injecting twice gives what injecting once gives: the sidecar's container
//! and volumes are replaced, never added again. Key order is kept; YAML
//! comments are not (the YAML library does not keep them).

use serde_yaml_ng::{Mapping, Value};

use crate::config::Listen;

pub const CONTAINER: &str = "wedsync-sidecar";
const CONFIG_VOLUME: &str = "wedsync-sidecar-config";
const SECRET_VOLUME: &str = "wedsync-sidecar-secrets";
const DATA_VOLUME: &str = "wedsync-sidecar-data";
pub const CONFIG_DIR: &str = "/etc/wedsync-sidecar";
pub const SECRET_DIR: &str = "/var/run/secrets/wedsync-sidecar";
pub const DATA_DIR: &str = "/var/lib/wedsync-sidecar";

/// What to inject.
#[derive(Debug, Clone)]
pub struct Options {
    pub image: String,
    pub config_map: String,
    pub secret: String,
    pub egress_port: u16,
    pub ingress_port: u16,
    pub admin_port: u16,
}

impl Options {
    /// The defaults of the contract, with the ports of `listeners`.
    pub fn new(listeners: &Listen) -> Self {
        Self {
            image: format!("wedsync-sidecar:{}", env!("CARGO_PKG_VERSION")),
            config_map: CONTAINER.into(),
            secret: CONTAINER.into(),
            egress_port: listeners.egress.port(),
            ingress_port: listeners.ingress.port(),
            admin_port: listeners.admin.port(),
        }
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("document {document}: {problem}")]
pub struct InjectError {
    /// 1 for the first document of the input.
    pub document: usize,
    pub problem: DocumentError,
}

/// What is wrong with one document.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("not valid YAML: {0}")]
    Yaml(String),
    #[error("`{0}` is not a mapping")]
    NotAMapping(String),
    #[error("`{0}` is not a list")]
    NotAList(String),
    #[error("a List without `items`")]
    ListWithoutItems,
    #[error("items[{index}]: {problem}")]
    Item {
        index: usize,
        problem: Box<DocumentError>,
    },
    #[error("a {kind} without `{path}`")]
    NoTemplate { kind: String, path: String },
    #[error("the pod already has a container named {CONTAINER} with image {found:?}, not {wanted:?}; remove it or inject with --image {found}")]
    OtherImage { found: String, wanted: String },
}

/// Injects into every document of `input` (YAML, `---`-separated).
pub fn inject(input: &str, options: &Options) -> Result<String, InjectError> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(input).enumerate() {
        let fail = |problem: DocumentError| InjectError {
            document: index + 1,
            problem,
        };
        let mut value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| fail(DocumentError::Yaml(e.to_string())))?;
        if value.is_null() {
            continue;
        }
        inject_document(&mut value, options).map_err(fail)?;
        out.push(
            serde_yaml_ng::to_string(&value)
                .map_err(|e| fail(DocumentError::Yaml(e.to_string())))?,
        );
    }
    Ok(out.join("---\n"))
}

fn key(name: &str) -> Value {
    Value::String(name.into())
}

/// The mapping at `path` below `value`, if every step is a mapping.
fn mapping_at<'a>(value: &'a mut Value, path: &[&str]) -> Option<&'a mut Mapping> {
    let mut current = value;
    for step in path {
        current = current.as_mapping_mut()?.get_mut(*step)?;
    }
    current.as_mapping_mut()
}

/// The mapping under `name`, created empty when missing.
fn child<'a>(mapping: &'a mut Mapping, name: &str) -> Result<&'a mut Mapping, DocumentError> {
    let entry = mapping
        .entry(key(name))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if entry.is_null() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry
        .as_mapping_mut()
        .ok_or_else(|| DocumentError::NotAMapping(name.into()))
}

/// The sequence under `name`, created empty when missing.
fn list<'a>(mapping: &'a mut Mapping, name: &str) -> Result<&'a mut Vec<Value>, DocumentError> {
    let entry = mapping
        .entry(key(name))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    entry
        .as_sequence_mut()
        .ok_or_else(|| DocumentError::NotAList(name.into()))
}

fn inject_document(document: &mut Value, options: &Options) -> Result<(), DocumentError> {
    let kind = document
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let template_path: &[&str] = match kind.as_str() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "Pod" => &[],
        "List" => {
            let items = document
                .get_mut("items")
                .and_then(Value::as_sequence_mut)
                .ok_or(DocumentError::ListWithoutItems)?;
            for (index, item) in items.iter_mut().enumerate() {
                inject_document(item, options).map_err(|problem| DocumentError::Item {
                    index,
                    problem: Box::new(problem),
                })?;
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let template =
        mapping_at(document, template_path).ok_or_else(|| DocumentError::NoTemplate {
            kind: kind.clone(),
            path: template_path.join("."),
        })?;
    let annotations = child(child(template, "metadata")?, "annotations")?;
    for (name, value) in [
        ("prometheus.io/scrape", "true".to_string()),
        ("prometheus.io/port", options.admin_port.to_string()),
        ("prometheus.io/path", "/metrics".to_string()),
    ] {
        annotations.insert(key(name), Value::String(value));
    }
    let spec = child(template, "spec")?;
    inject_pod_spec(spec, options)
}

fn inject_pod_spec(spec: &mut Mapping, options: &Options) -> Result<(), DocumentError> {
    for field in ["containers", "initContainers"] {
        let Some(containers) = spec.get(field).and_then(Value::as_sequence) else {
            continue;
        };
        for container in containers {
            if container.get("name").and_then(Value::as_str) != Some(CONTAINER) {
                continue;
            }
            let image = container.get("image").and_then(Value::as_str).unwrap_or("");
            if image != options.image {
                return Err(DocumentError::OtherImage {
                    found: image.into(),
                    wanted: options.image.clone(),
                });
            }
        }
    }
    // A sidecar of the same image in `containers` (an older injection by
    // hand) moves to the native sidecar's place.
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_sequence_mut) {
        containers.retain(|c| c.get("name").and_then(Value::as_str) != Some(CONTAINER));
    }
    let init = list(spec, "initContainers")?;
    let sidecar = sidecar_container(options);
    match init
        .iter_mut()
        .find(|c| c.get("name").and_then(Value::as_str) == Some(CONTAINER))
    {
        Some(existing) => *existing = sidecar,
        // First, so it is up before any other init container runs.
        None => init.insert(0, sidecar),
    }
    let volumes = list(spec, "volumes")?;
    for volume in sidecar_volumes(options) {
        let name = volume.get("name").cloned();
        match volumes.iter_mut().find(|v| v.get("name") == name.as_ref()) {
            Some(existing) => *existing = volume,
            None => volumes.push(volume),
        }
    }
    Ok(())
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).expect("the sidecar's own YAML parses")
}

fn sidecar_container(options: &Options) -> Value {
    let Options {
        image,
        egress_port,
        ingress_port,
        admin_port,
        ..
    } = options;
    yaml(&format!(
        r#"
name: {CONTAINER}
image: "{image}"
restartPolicy: Always
args: [run, -c, {CONFIG_DIR}/sidecar.yaml, --log-format, json]
ports:
  - {{ name: sidecar-egress, containerPort: {egress_port}, protocol: TCP }}
  - {{ name: webhooks, containerPort: {ingress_port}, protocol: TCP }}
  - {{ name: sidecar-admin, containerPort: {admin_port}, protocol: TCP }}
startupProbe:
  httpGet: {{ path: /readyz, port: sidecar-admin }}
  periodSeconds: 1
  failureThreshold: 30
readinessProbe:
  httpGet: {{ path: /readyz, port: sidecar-admin }}
  periodSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet: {{ path: /healthz, port: sidecar-admin }}
  periodSeconds: 10
  failureThreshold: 3
resources:
  requests: {{ cpu: 50m, memory: 48Mi }}
  limits: {{ memory: 128Mi }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  readOnlyRootFilesystem: true
  allowPrivilegeEscalation: false
  capabilities: {{ drop: [ALL] }}
  seccompProfile: {{ type: RuntimeDefault }}
volumeMounts:
  - {{ name: {CONFIG_VOLUME}, mountPath: {CONFIG_DIR}, readOnly: true }}
  - {{ name: {SECRET_VOLUME}, mountPath: {SECRET_DIR}, readOnly: true }}
  - {{ name: {DATA_VOLUME}, mountPath: {DATA_DIR} }}
"#
    ))
}

fn sidecar_volumes(options: &Options) -> Vec<Value> {
    vec![
        yaml(&format!(
            "{{ name: {CONFIG_VOLUME}, configMap: {{ name: \"{}\" }} }}",
            options.config_map
        )),
        yaml(&format!(
            "{{ name: {SECRET_VOLUME}, secret: {{ secretName: \"{}\", defaultMode: 288 }} }}",
            options.secret
        )),
        yaml(&format!(
            "{{ name: {DATA_VOLUME}, emptyDir: {{ sizeLimit: 1Gi }} }}"
        )),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            image: "registry.example/wedsync-sidecar:1.0".into(),
            ..Options::new(&Listen::default())
        }
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: app }\nspec:\n  selector: { matchLabels: { app: app } }\n  template:\n    metadata: { labels: { app: app } }\n    spec:\n      containers: [{ name: app, image: app:1 }]\n";

    #[test]
    fn a_deployment_gets_a_native_sidecar_first_among_init_containers() {
        let out = inject(DEPLOYMENT, &options()).unwrap();
        let value: Value = serde_yaml_ng::from_str(&out).unwrap();
        let spec = &value["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["name"], CONTAINER);
        assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
        assert_eq!(spec["containers"][0]["name"], "app", "the app is untouched");
        assert_eq!(spec["volumes"].as_sequence().unwrap().len(), 3);
        assert_eq!(
            value["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"],
            "9901"
        );
    }

    #[test]
    fn ports_come_from_the_configs_listeners() {
        // Only `listen` is read: the secret file exists only in the pod.
        let text = "listen:\n  admin: 0.0.0.0:9999\nadmin: { token: \"${file:/in/the/pod}\" }\n";
        let listeners = Listen::from_yaml(text, "sidecar.yaml").unwrap();
        assert_eq!(listeners.admin, ([0, 0, 0, 0], 9999).into());
        assert_eq!(listeners.ingress, Listen::default().ingress);
        let error = Listen::from_yaml("listen: { admin: nowhere }", "sidecar.yaml").unwrap_err();
        assert_eq!(error.errors[0].path, "listen.admin");
        assert!(error.errors[0]
            .message
            .starts_with("invalid address \"nowhere\""));
    }

    #[test]
    fn injecting_twice_is_injecting_once() {
        let once = inject(DEPLOYMENT, &options()).unwrap();
        assert_eq!(inject(&once, &options()).unwrap(), once);
    }

    #[test]
    fn another_image_under_the_sidecars_name_is_refused() {
        let once = inject(DEPLOYMENT, &options()).unwrap();
        let other = Options {
            image: "wedsync-sidecar:0.0.1".into(),
            ..options()
        };
        let error = inject(&once, &other).unwrap_err();
        assert_eq!(error.document, 1);
        assert_eq!(
            error.problem,
            DocumentError::OtherImage {
                found: "registry.example/wedsync-sidecar:1.0".into(),
                wanted: "wedsync-sidecar:0.0.1".into(),
            }
        );
    }

    #[test]
    fn other_documents_pass_through_and_bad_ones_are_named() {
        let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: app\nspec:\n  ports:\n  - port: 80\n";
        assert_eq!(inject(service, &options()).unwrap(), service);
        let error = inject(&format!("{service}---\nkind: [unclosed\n"), &options()).unwrap_err();
        assert_eq!(error.document, 2);
        let error = inject("kind: Deployment\nspec: {}\n", &options()).unwrap_err();
        assert_eq!(
            error.problem.to_string(),
            "a Deployment without `spec.template`"
        );
    }
}
