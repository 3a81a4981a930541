//! The e2e scenarios live in `tests/`. They talk only to the cluster named by `KUBECONFIG`
//! (the local control plane from `make e2e`, or a kind cluster in users' CI) and assume Cluster
//! API core is installed there; `make e2e` and `make e2e-kind` set that up.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// The client of the cluster KUBECONFIG names; panics with how to run the suite without one.
pub async fn client() -> kube::Client {
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "the e2e suite needs KUBECONFIG; run it with `make e2e` (local control plane) or `make e2e-kind`"
    );
    match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => panic!("KUBECONFIG names no reachable cluster: {e}"),
    }
}

/// The repository's root (for the templates and hack/tools).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
