# syntax=docker/dockerfile:1
# Multi-stage build: a static (musl) binary on a distroless base, run as a non-root user.
#   docker build -t onepassword-secrets-operator .
# The image is the stripped binary (about 18 MB) on distroless/static (about 2 MB): see the
# README's "Install" section. No shell, no package manager; CA certificates and tzdata only.
FROM rust:1.89-alpine AS build
# make: the allocator (tikv-jemallocator) builds jemalloc from its C sources.
RUN apk add --no-cache musl-dev make
WORKDIR /src
# Cargo reads every workspace member's manifest (and finds its targets) to resolve the lock file,
# so all of them are copied; only the operator binary and what it links (src/, connect/) is built:
# the simulator (connect-sim/) and the test harness (test-support/) are dev-dependencies.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY connect ./connect
COPY connect-sim ./connect-sim
COPY test-support ./test-support
# The cache mounts keep downloaded crates and compiled dependencies between builds (the binary is
# copied out of the cached target dir). Symbols are stripped: a smaller image, same behaviour.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p onepassword-secrets-operator --bin onepassword-operator \
 && cp target/release/onepassword-operator /onepassword-operator

FROM gcr.io/distroless/static-debian12:nonroot
# At the official image's path, so the official chart's and kustomize config's
# `command: ["/manager"]` runs this operator when only the image is swapped.
COPY --from=build /onepassword-operator /manager
USER 65532:65532
# 8080: /metrics; 8081: /healthz and /readyz.
EXPOSE 8080 8081
ENTRYPOINT ["/manager"]
