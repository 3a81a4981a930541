# syntax=docker/dockerfile:1
# The e2e-kind simulated infrastructure provider: `local-control-plane sim-infra` (static) with
# the kube-apiserver and etcd it runs for workload clusters, from a context directory that
# hack/e2e-kind.sh fills with binaries built on the runner. A test fixture, never shipped. Not
# distroless: the simulator runs each kube-apiserver and etcd under a `sh` lifeline.
FROM docker.io/library/debian:bookworm-slim
COPY local-control-plane kube-apiserver etcd /usr/local/bin/
ENV KUBEBUILDER_ASSETS=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/local-control-plane", "sim-infra"]
