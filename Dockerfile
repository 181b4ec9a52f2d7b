# syntax=docker/dockerfile:1.7
#
# The Triggers API as a container image (docs/deploy.md, "Containers").
#
# Final image: gcr.io/distroless/cc-debian12:nonroot. It holds glibc,
# libgcc, CA certificates and tzdata, runs as uid 65532 (nonroot), and has
# no shell and no package manager. Chosen over scratch with a static musl
# build: the binary builds unchanged against glibc (the AWS SDK, rusqlite's
# bundled SQLite), musl's allocator is slow under a multi-threaded server,
# and scratch would need CA certificates copied in by hand. Builder and final
# image are both Debian 12 (bookworm), so the glibc versions match.
#
# No shell in the final image: HEALTHCHECK and CMD are in exec form, and the
# health check is the binary itself (`triggers-api healthcheck` exits 0 when
# GET http://127.0.0.1:8080/status answers 200).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS builder
WORKDIR /src
COPY . .
# Stripped, without the debug info the release profile keeps for profiling.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin triggers-api \
    && cp target/release/triggers-api /usr/local/bin/triggers-api \
    && mkdir -p /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /usr/local/bin/triggers-api /usr/local/bin/triggers-api
# The embedded store's directory, writable by the nonroot user.
COPY --from=builder --chown=65532:65532 /data /data
ENV TRIGGERS_BIND=0.0.0.0:8080 \
    TRIGGERS_STORE=sqlite:///data/triggers.db \
    TRIGGERS_LOG_FORMAT=json
VOLUME ["/data"]
EXPOSE 8080
USER 65532:65532
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/triggers-api", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/triggers-api"]
CMD ["serve"]
