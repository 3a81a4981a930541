# The talos-capi manager image. Built in users' CI (no container engine runs on the dev machines).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p talos-capi

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/talos-capi /usr/local/bin/talos-capi
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/talos-capi"]
