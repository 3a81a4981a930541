# syntax=docker/dockerfile:1
# The talos-capi manager image: a static binary on distroless (no shell, no package manager),
# non-root, fit for a read-only root filesystem. The binary is built by `make release-binary`,
# the same target CI runs on every change (no container engine runs on the dev machines).

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN make release-binary

FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="talos-capi" \
      org.opencontainers.image.description="Cluster API bootstrap and control-plane provider for Talos Linux" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/talos-capi/talos-capi" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /src/target/release-static/talos-capi /talos-capi
# glibc's malloc otherwise keeps an arena per thread that allocates (up to 8 per core); two are
# enough for the manager's few threads, and its peak RSS in the bootstrap benchmark is 2 MiB
# lower (docs/benchmarks.md, which runs the manager with the same setting).
ENV MALLOC_ARENA_MAX=2
USER 65532:65532
ENTRYPOINT ["/talos-capi"]
CMD ["manager"]
