//! The e2e scenarios live in `tests/`. They talk only to the cluster named by `KUBECONFIG`
//! (the local control plane from `make up`, or a kind cluster in users' CI) and assume Cluster
//! API core is installed there; `make e2e` and `make e2e-kind` set that up.
#![forbid(unsafe_code)]
