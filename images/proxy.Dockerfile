# syntax=docker/dockerfile:1.7
# The image of the sidecar proxy (bin `tollgate-proxy`).
#
#   docker build -f images/proxy.Dockerfile -t ghcr.io/tollgate-dev/tollgate-proxy:0.1.0 .
#
# Run from the repository root: the build needs the whole Cargo workspace.
# Multi-stage: a static (musl) build with the `dist` profile (release
# with fat LTO: Cargo.toml), then distroless/static as
# the runtime — no shell, no package manager, no libc — as user 65532.
# Not built in this project's CI (no container runtime there); see
# charts/tollgate/README.md.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p tollgate-proxy --bin tollgate-proxy --target "$(cat /rust-target)" \
 && cp "target/$(cat /rust-target)/dist/tollgate-proxy" /tollgate-proxy

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /tollgate-proxy /usr/local/bin/tollgate-proxy
USER 65532:65532
EXPOSE 15443 15000 15001
ENTRYPOINT ["/usr/local/bin/tollgate-proxy"]
# The injected container passes its own arguments and TOLLGATE_* env.
