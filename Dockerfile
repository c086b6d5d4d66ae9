# KeyDB node image: build with the Rust toolchain, run on a slim Debian as a
# non-root user. `docker build -t keydb .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data keydb \
    && mkdir -p /data && chown keydb /data
COPY --from=build /src/target/release/keydb-node /src/target/release/keydb-admin /usr/local/bin/
USER 10001
# Relative paths (the fs object store's default) land in the data volume.
WORKDIR /data
# Bound to every address, so a token file is required: mount one at
# /etc/keydb/tokens (see README, "Security"), or set KEYDB_AUTH_TOKENS_FILE=
# and KEYDB_INSECURE_NO_AUTH=true to serve without authentication.
ENV KEYDB_BIND=0.0.0.0 \
    KEYDB_AUTH_TOKENS_FILE=/etc/keydb/tokens/tokens \
    KEYDB_DATA_DIR=/data/node \
    RUST_LOG=info
VOLUME /data
EXPOSE 50051
ENTRYPOINT ["keydb-node"]
