# Build: a full Rust image compiles the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
RUN cargo build --release --locked

# Run: a small Debian with only the binary, as a non-root user.
FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /var/lib/sentinel sentinel \
    && mkdir -p /var/lib/sentinel/data /var/lib/sentinel/sandbox \
    && chown -R sentinel /var/lib/sentinel
COPY --from=build /src/target/release/sentinel /usr/local/bin/sentinel
USER sentinel
WORKDIR /var/lib/sentinel
ENV SENTINEL_LISTEN=0.0.0.0:3000 \
    SENTINEL_DATA_DIR=/var/lib/sentinel/data \
    SENTINEL_SANDBOX_DIR=/var/lib/sentinel/sandbox
EXPOSE 3000
HEALTHCHECK --interval=15s --timeout=3s CMD curl -sf http://127.0.0.1:3000/healthz || exit 1
ENTRYPOINT ["sentinel"]
CMD ["serve"]
