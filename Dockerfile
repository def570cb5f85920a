# Sentinel's container image: `docker build -t sentinel .` (docker-compose.yml builds it too).
#
# Build stage: the full Rust image compiles the release binary. Besides the sources it needs
# every file src/ compiles in with include_str!/include_bytes!: blocks/ (Slack templates),
# config/ (the defaults), page/ (the status page) and manifests/slack-app.yaml.
# tests/it/packaging.rs derives that list from src/ and checks these COPY lines against it.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY blocks ./blocks
COPY config ./config
COPY page ./page
COPY manifests/slack-app.yaml ./manifests/slack-app.yaml
RUN cargo build --release --locked \
    && strip target/release/sentinel

# Run stage: Debian slim with only the binary (it links glibc and libgcc alone: TLS is
# rustls), as the unprivileged user 10001. The numeric USER lets Kubernetes verify
# runAsNonRoot.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 sentinel \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/sentinel --shell /usr/sbin/nologin sentinel \
    && mkdir -p /var/lib/sentinel/data /var/lib/sentinel/sandbox \
    && chown -R 10001:10001 /var/lib/sentinel
COPY --from=build /src/target/release/sentinel /usr/local/bin/sentinel
USER 10001:10001
WORKDIR /var/lib/sentinel
# Environment variables override the configuration file (SENTINEL_CONFIG), so these three
# are set here, where a container needs them, and nowhere else.
ENV SENTINEL_LISTEN=0.0.0.0:3000 \
    SENTINEL_DATA_DIR=/var/lib/sentinel/data \
    SENTINEL_SANDBOX_DIR=/var/lib/sentinel/sandbox
EXPOSE 3000
# Liveness without curl in the image: bash's /dev/tcp sends one request to /healthz and the
# check passes only on a 200 status line.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3000 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["sentinel"]
CMD ["serve"]
