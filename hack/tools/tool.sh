#!/usr/bin/env bash
# Locate or build one of the real components the tests and the demo run against,
# and print the absolute path of what the caller asked for.
#
#   hack/tools/tool.sh kube-apiserver|etcd|cluster-api|cluster-api-config|helm|talosctl
#
# Overrides (skip the build when you already have the binaries):
#   KUBEBUILDER_ASSETS   directory holding kube-apiserver and etcd (envtest convention)
#   CLUSTER_API_BIN      Cluster API core manager binary
#   CLUSTER_API_CONFIG   Cluster API's config/ directory (crd/bases, webhook/manifests.yaml)
#   HELM_BIN             helm binary
#   TALOSCTL_BIN         talosctl binary
#   KUBECTL_BIN          kubectl binary (default: the one on PATH, else built from k8s.io/kubernetes)
# Built binaries are cached by tool and version under
#   ${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/tools/<tool>-<version>/
set -euo pipefail

here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
# shellcheck source=versions.env
. "$here/versions.env"
cache=${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/tools

die() { echo "tool.sh: $*" >&2; exit 1; }

need_go() {
  local override=$1
  command -v go >/dev/null 2>&1 ||
    die "no Go toolchain on PATH to build $tool; install Go 1.24+ or set $override"
}

# go_build <wrapper dir> <package> <output> <override variable> [ldflags]
go_build() {
  local dir=$1 pkg=$2 out=$3 override=$4 ldflags=${5:-}
  need_go "$override"
  local tmp="$out.tmp.$$"
  mkdir -p "$(dirname "$out")"
  echo "tool.sh: building $pkg into $out (once per version; set $override to skip)" >&2
  if ! (cd "$here/$dir" && go mod download >&2); then
    die "could not download Go modules for $tool (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY)); set $override to use a binary you already have"
  fi
  (cd "$here/$dir" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "${TAGS:-}" \
    -ldflags "-s -w $ldflags" -o "$tmp" "$pkg" >&2) || { rm -f "$tmp"; die "building $tool failed; set $override to use a prebuilt binary"; }
  mv "$tmp" "$out"
}

# Version ldflags for Kubernetes binaries, so that /version and `kubectl version` report the
# release instead of v0.0.0-master.
k8s_ldflags() {
  local minor=${KUBERNETES_VERSION#v1.} p ld=""
  minor=${minor%%.*}
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$KUBERNETES_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  echo "$ld"
}

from_assets() {
  local name=$1
  if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
    [ -x "$KUBEBUILDER_ASSETS/$name" ] || die "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS has no executable $name"
    echo "$KUBEBUILDER_ASSETS/$name"
    return 0
  fi
  return 1
}

tool=${1:-}
case "$tool" in
  kube-apiserver)
    from_assets kube-apiserver && exit 0
    out="$cache/kube-apiserver-$KUBERNETES_VERSION/kube-apiserver"
    [ -x "$out" ] || TAGS=selinux,notest go_build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$out" KUBEBUILDER_ASSETS "$(k8s_ldflags)"
    echo "$out" ;;
  kubectl)
    # The one on PATH if there is one (any recent kubectl talks to v1.33), else built from the
    # same Kubernetes release as kube-apiserver.
    if [ -n "${KUBECTL_BIN:-}" ]; then echo "$KUBECTL_BIN"; exit 0; fi
    if command -v kubectl >/dev/null 2>&1; then command -v kubectl; exit 0; fi
    out="$cache/kubectl-$KUBERNETES_VERSION/kubectl"
    [ -x "$out" ] || go_build kube-apiserver k8s.io/kubernetes/cmd/kubectl "$out" KUBECTL_BIN "$(k8s_ldflags)"
    echo "$out" ;;
  etcd)
    from_assets etcd && exit 0
    out="$cache/etcd-$ETCD_VERSION/etcd"
    [ -x "$out" ] || go_build etcd go.etcd.io/etcd/server/v3 "$out" KUBEBUILDER_ASSETS \
      "-X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION"
    echo "$out" ;;
  cluster-api)
    if [ -n "${CLUSTER_API_BIN:-}" ]; then echo "$CLUSTER_API_BIN"; exit 0; fi
    out="$cache/cluster-api-$CLUSTER_API_VERSION/cluster-api"
    [ -x "$out" ] || go_build cluster-api sigs.k8s.io/cluster-api "$out" CLUSTER_API_BIN \
      "-X sigs.k8s.io/cluster-api/version.gitVersion=$CLUSTER_API_VERSION"
    echo "$out" ;;
  cluster-api-config)
    # Cluster API's config/ directory: crd/bases (CRDs) and webhook/manifests.yaml.
    if [ -n "${CLUSTER_API_CONFIG:-}" ]; then echo "$CLUSTER_API_CONFIG"; exit 0; fi
    out="$cache/cluster-api-$CLUSTER_API_VERSION/config"
    if [ ! -f "$out/.complete" ]; then
      need_go CLUSTER_API_CONFIG
      dir=$(go mod download -json "sigs.k8s.io/cluster-api@$CLUSTER_API_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') ||
        die "could not download sigs.k8s.io/cluster-api@$CLUSTER_API_VERSION; set CLUSTER_API_CONFIG"
      [ -d "$dir/config/crd/bases" ] || die "no config/crd/bases in $dir; set CLUSTER_API_CONFIG"
      rm -rf "$out" && mkdir -p "$out/crd/bases" "$out/webhook"
      cp "$dir"/config/crd/bases/*.yaml "$out/crd/bases/"
      cp "$dir"/config/webhook/manifests.yaml "$out/webhook/"
      chmod -R u+w "$out"
      touch "$out/.complete"
    fi
    echo "$out" ;;
  helm)
    if [ -n "${HELM_BIN:-}" ]; then echo "$HELM_BIN"; exit 0; fi
    out="$cache/helm-$HELM_VERSION/helm"
    if [ ! -x "$out" ]; then
      minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
      ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      ld="$ld -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
      ld="$ld -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
      go_build helm helm.sh/helm/v3/cmd/helm "$out" HELM_BIN "$ld"
    fi
    echo "$out" ;;
  talosctl)
    if [ -n "${TALOSCTL_BIN:-}" ]; then echo "$TALOSCTL_BIN"; exit 0; fi
    out="$cache/talosctl-$TALOS_VERSION/talosctl"
    [ -x "$out" ] || TAGS=grpcnotrace go_build talosctl github.com/siderolabs/talos/cmd/talosctl "$out" TALOSCTL_BIN
    echo "$out" ;;
  *)
    die "usage: $0 kube-apiserver|kubectl|etcd|cluster-api|cluster-api-config|helm|talosctl" ;;
esac
