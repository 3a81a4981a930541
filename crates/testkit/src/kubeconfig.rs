use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::Error;
use crate::pki::CertPair;

/// An admin kubeconfig with embedded certificates for one API server.
pub(crate) fn render(name: &str, server: &str, ca_pem: &str, admin: &CertPair) -> String {
    let b64 = |s: &str| STANDARD.encode(s.as_bytes());
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {name}-admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}-admin
current-context: {name}
"#,
        ca = b64(ca_pem),
        cert = b64(&admin.cert_pem),
        key = b64(&admin.key_pem),
    )
}

/// A `kube::Config` for a rendered kubeconfig.
pub(crate) async fn config(kubeconfig_yaml: &str) -> Result<kube::Config, Error> {
    let kc = Kubeconfig::from_yaml(kubeconfig_yaml)
        .map_err(|e| Error::Kubeconfig(format!("parsing generated kubeconfig: {e}")))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| Error::Kubeconfig(e.to_string()))
}
