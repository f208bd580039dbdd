# The one binary in a small runtime image. Build: docker build -t ipfixsvc:dev .
# Stage 1 compiles with the toolchain Cargo.toml asks for (rust-version); aws-lc-sys needs
# cmake, clang and a C compiler at build time only.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The chart font, embedded at compile time (src/analysis/chart.rs).
COPY assets ./assets
RUN cargo build --release --locked --bin ipfixsvc \
 && strip target/release/ipfixsvc

# Stage 2: Debian slim (glibc, as built against) with CA certificates for https sinks and
# rediss://, a non-root user, nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --home-dir /var/lib/ipfixsvc ipfixsvc \
 && mkdir -p /var/lib/ipfixsvc /etc/ipfixsvc \
 && chown ipfixsvc:ipfixsvc /var/lib/ipfixsvc
COPY --from=build /src/target/release/ipfixsvc /usr/local/bin/ipfixsvc
USER 10001:10001
WORKDIR /var/lib/ipfixsvc
# IPFIX over TCP and UDP, IPFIX over TLS, the HTTP API, the cluster port.
EXPOSE 4739/tcp 4739/udp 4740/tcp 8080/tcp 4800/tcp
ENV IPFIXSVC__STORAGE__DIR=/var/lib/ipfixsvc \
    IPFIXSVC__LOG__FORMAT=json
ENTRYPOINT ["/usr/local/bin/ipfixsvc"]
CMD ["serve"]
