use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::OnceCell;

use crate::tools::repo_root;
use crate::{Error, LocalControlPlane};

static SHARED: OnceCell<LocalControlPlane> = OnceCell::const_new();

/// The control plane shared by every test in this test binary: etcd, kube-apiserver, the
/// Cluster API core manager, Cluster API's CRDs and ours (config/crd/bases). It starts on first
/// use; its processes end when the test binary exits (see [`crate::process`]). Tests isolate
/// themselves with [`unique_namespace`].
pub async fn shared() -> Result<&'static LocalControlPlane, Error> {
    SHARED
        .get_or_try_init(|| async {
            let mut builder = LocalControlPlane::builder().name("testkit").cluster_api();
            let ours = repo_root().join("config/crd/bases");
            if ours.is_dir() {
                builder = builder.crds(ours);
            }
            builder.start().await
        })
        .await
}

/// The shared control plane if a test of this binary has started it (never starts it): for a
/// diagnostic that must not start one, in a test that may run on a control plane of its own.
pub fn shared_if_started() -> Option<&'static LocalControlPlane> {
    SHARED.get()
}

/// Create a namespace named `<prefix>-<random suffix>` and return its name.
pub async fn unique_namespace(client: &kube::Client, prefix: &str) -> Result<String, Error> {
    let ns = Namespace {
        metadata: ObjectMeta {
            generate_name: Some(format!("{prefix}-")),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    created
        .metadata
        .name
        .ok_or_else(|| Error::Kubeconfig("created namespace has no name".into()))
}
