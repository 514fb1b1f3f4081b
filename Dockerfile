# The usual build, for registries that build with Docker or BuildKit:
#   docker build --target mesh-proxy -t REGISTRY/mesh-proxy:TAG .
#   docker build --target mesh-injector -t REGISTRY/mesh-injector:TAG .
# scripts/image builds the same two images with no daemon (buildah, FROM scratch).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p mesh-proxy -p mesh-injector \
 && cp target/release/mesh-proxy target/release/mesh-injector /usr/local/bin/

# The sidecar, and its init container (`mesh-proxy init` needs iptables; it runs as root with
# NET_ADMIN, the sidecar as UID 1500).
FROM debian:bookworm-slim AS mesh-proxy
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd -g 1500 mesh-proxy && useradd -u 1500 -g 1500 -M -s /usr/sbin/nologin mesh-proxy
COPY --from=build /usr/local/bin/mesh-proxy /usr/local/bin/mesh-proxy
USER 1500
ENTRYPOINT ["/usr/local/bin/mesh-proxy"]

# The webhook and MeshConfig server: glibc and CA certificates, nothing else, non-root.
FROM gcr.io/distroless/cc-debian12:nonroot AS mesh-injector
COPY --from=build /usr/local/bin/mesh-injector /usr/local/bin/mesh-injector
USER 65532
ENTRYPOINT ["/usr/local/bin/mesh-injector"]
