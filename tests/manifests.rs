//! The deployment is part of the product: every manifest validates against the Kubernetes
//! schemas (kubernetes-validate, strict), and every key, environment variable, port and probe
//! path the manifests use is one the binary really has (`tests/manifests/check.py` runs
//! `ipfixsvc serve --check` with each pod's environment and the ConfigMap's file).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn base_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("manifests/base"))
        .expect("manifests/base")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    files
}

/// The example overlay rendered by `kubectl kustomize`, when kubectl is installed (it is not a
/// Debian package of this release; the base files are checked one by one either way).
fn rendered_overlay() -> Option<PathBuf> {
    let out = Command::new("kubectl")
        .args(["kustomize"])
        .arg(root().join("manifests/overlays/example"))
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "kubectl kustomize manifests/overlays/example: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = std::env::temp_dir().join(format!("ipfixsvc-rendered-{}.yaml", std::process::id()));
    std::fs::write(&path, &out.stdout).expect("write rendered");
    Some(path)
}

fn validate(file: &Path) -> String {
    let out = Command::new(common::venv_tool("kubernetes-validate"))
        .arg("--strict")
        .arg(file)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !text.contains("ERROR"),
        "{}: {text}",
        file.display()
    );
    text
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schemas() {
    let mut passed = 0;
    let mut files = base_files();
    files.extend(rendered_overlay());
    for f in &files {
        let text = validate(f);
        passed += text.matches(" passed for resource ").count();
        // Only the Gateway API's kinds have no schema here (CRDs).
        for line in text.lines().filter(|l| l.contains("Couldn't find schema")) {
            assert!(
                line.contains("gateway.networking.k8s.io"),
                "a kind without a schema: {line}"
            );
        }
    }
    // Namespace, ConfigMap, Secret, PVC, 4 Services, 2 StatefulSets, a Deployment, an HPA, 2
    // PDBs and 3 NetworkPolicies: 17 in the base alone.
    assert!(passed >= 17, "only {passed} resources validated");
}

#[test]
fn the_manifests_use_only_ports_keys_and_paths_the_binary_has() {
    let openapi =
        std::env::temp_dir().join(format!("ipfixsvc-openapi-{}.json", std::process::id()));
    std::fs::write(&openapi, ipfixsvc::api::openapi::document()).expect("openapi");
    let mut cmd = Command::new(common::venv_tool("python3"));
    cmd.arg(root().join("tests/manifests/check.py"))
        .arg("--root")
        .arg(root())
        .arg("--bin")
        .arg(common::BIN)
        .arg("--openapi")
        .arg(&openapi);
    if let Some(r) = rendered_overlay() {
        cmd.arg("--rendered").arg(r);
    }
    let out = cmd.output().expect("run check.py");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2 workloads of ours checked; 0 failures"),
        "{text}"
    );
}

#[test]
fn serve_check_refuses_what_serve_would_and_hides_secrets() {
    let out = Command::new(common::BIN)
        .args(["serve", "--check"])
        .env("IPFIXSVC__COLLECTOR__TCP_LISTN", "0.0.0.0:4739")
        .output()
        .expect("serve --check");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field `tcp_listn`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(common::BIN)
        .args(["serve", "--check"])
        .env("IPFIXSVC__API__ADMIN_TOKEN", "a-secret-token-0123456789")
        .env("IPFIXSVC__CLUSTER__COOKIE", "a-secret-cookie")
        .output()
        .expect("serve --check");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("a-secret"), "{text}");
    assert!(text.contains("admin_token = \"(set)\""), "{text}");
}
