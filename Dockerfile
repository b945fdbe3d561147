# Multi-stage build: compile in the Rust image, run from a small Debian image as a non-root user.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p voltrun && strip target/release/voltrun

FROM debian:bookworm-slim
# The runtimes functions use (python3, node) belong in the runtime image once the engine runs code.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/voltrun --create-home voltrun
COPY --from=build /src/target/release/voltrun /usr/local/bin/voltrun
USER voltrun
WORKDIR /var/lib/voltrun
ENV DATA_DIR=/var/lib/voltrun PORT=8080 LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["voltrun"]
CMD ["server"]
