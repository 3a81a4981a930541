//! Where the real components come from: `hack/tools/tool.sh` builds them from Go modules once per
//! version (or honours KUBEBUILDER_ASSETS and the per-tool overrides) and prints their paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The components the local control plane can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    KubeApiserver,
    Etcd,
    ClusterApi,
    ClusterApiConfig,
    Clusterctl,
    Cabpt,
    CabptConfig,
    Cacppt,
    CacpptConfig,
    /// The Cluster API in-cluster IPAM provider (IPAM_IN_CLUSTER_VERSION).
    IpamInCluster,
    /// Its config/ directory: crd/bases, crd/patches and webhook/manifests.yaml.
    IpamInClusterConfig,
    Helm,
    Talosctl,
    /// talosctl of the Talos 1.14 line (TALOS_114_VERSION), the oracle for the 1.14 contract.
    Talosctl114,
    Kubectl,
}

impl Tool {
    pub fn name(self) -> &'static str {
        match self {
            Tool::KubeApiserver => "kube-apiserver",
            Tool::Etcd => "etcd",
            Tool::ClusterApi => "cluster-api",
            Tool::ClusterApiConfig => "cluster-api-config",
            Tool::Clusterctl => "clusterctl",
            Tool::Cabpt => "cabpt",
            Tool::CabptConfig => "cabpt-config",
            Tool::Cacppt => "cacppt",
            Tool::CacpptConfig => "cacppt-config",
            Tool::IpamInCluster => "ipam-in-cluster",
            Tool::IpamInClusterConfig => "ipam-in-cluster-config",
            Tool::Helm => "helm",
            Tool::Talosctl => "talosctl",
            Tool::Talosctl114 => "talosctl-1.14",
            Tool::Kubectl => "kubectl",
        }
    }
}

/// The repository root, found from this crate's manifest directory or `TALOS_CAPI_ROOT`.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("TALOS_CAPI_ROOT") {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of `tool`, building it first if it is not cached yet.
pub fn locate(tool: Tool) -> Result<PathBuf, Error> {
    // The envtest convention, honoured without the script (which needs a shell and the
    // repository): how an image with the binaries beside it (the e2e-kind sim-infra) finds them.
    if matches!(tool, Tool::KubeApiserver | Tool::Etcd)
        && let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS")
    {
        let path = Path::new(&assets).join(tool.name());
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::Tool {
                tool: tool.name().to_owned(),
                message: format!("KUBEBUILDER_ASSETS has no {}", path.display()),
            })
        };
    }
    let script = repo_root().join("hack/tools/tool.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(tool.name())
        .output()
        .map_err(Error::io(format!("running {}", script.display())))?;
    if !out.status.success() {
        return Err(Error::Tool {
            tool: tool.name().to_owned(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !path.exists() {
        return Err(Error::Tool {
            tool: tool.name().to_owned(),
            message: format!("{} does not exist", path.display()),
        });
    }
    Ok(path)
}
