# Multi-stage build: a static (musl) binary on a distroless base, run as a non-root user.
#   docker build -t onepassword-secrets-operator .
FROM rust:1.89-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin onepassword-operator \
 && strip target/release/onepassword-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /src/target/release/onepassword-operator /onepassword-operator
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/onepassword-operator"]
