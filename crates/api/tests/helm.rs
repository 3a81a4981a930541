//! The real helm lints, renders and installs the chart into a real API server.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a test failure

use std::process::Command;

use testkit::LocalControlPlane;
use testkit::tools::{Tool, locate, repo_root};

fn helm(args: &[&str]) -> String {
    let o = Command::new(locate(Tool::Helm).unwrap())
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "helm {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn helm_lints_renders_and_installs_the_chart() {
    let chart = repo_root().join("charts/talos-capi");
    let chart = chart.to_str().unwrap();
    let lint = helm(&["lint", "--strict", chart]);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let rendered = helm(&["template", "talos-capi", chart, "--include-crds"]);
    for kind in [
        "TalosConfig",
        "TalosConfigTemplate",
        "TalosControlPlane",
        "TalosControlPlaneTemplate",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "{kind} in the rendered chart"
        );
    }

    // A control plane of its own: helm must be the one installing the CRDs.
    let cp = LocalControlPlane::builder()
        .name("helm")
        .start()
        .await
        .unwrap();
    let kubeconfig = cp.kubeconfig_path();
    let kubeconfig = kubeconfig.to_str().unwrap();
    helm(&[
        "install",
        "talos-capi",
        chart,
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "talos-capi-system",
        "--create-namespace",
        "--wait",
    ]);
    let client = cp.client().await.unwrap();
    for crd in api::all_crds() {
        let name = kube::ResourceExt::name_any(&crd);
        testkit::wait_established(&client, &name).await.unwrap();
    }
    let list = helm(&[
        "list",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "talos-capi-system",
    ]);
    assert!(
        list.contains("talos-capi") && list.contains("deployed"),
        "{list}"
    );
    helm(&[
        "uninstall",
        "talos-capi",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "talos-capi-system",
    ]);
}
