# Multi-stage build: compile in the Rust image, run from a small Debian image.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p voltrun && strip target/release/voltrun

FROM debian:bookworm-slim
# bubblewrap is the function sandbox; python3 and nodejs are the runtimes functions use.
RUN apt-get update && apt-get install -y --no-install-recommends \
        ca-certificates bubblewrap python3 nodejs curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/voltrun --create-home voltrun
COPY --from=build /src/target/release/voltrun /usr/local/bin/voltrun
WORKDIR /var/lib/voltrun
ENV DATA_DIR=/var/lib/voltrun PORT=8080 LOG_FORMAT=json
EXPOSE 8080
# The sandbox needs root (it runs every function as its own unprivileged uid and sets cgroup limits)
# and a privileged container (`docker run --privileged`). To serve the API without running functions,
# run unprivileged instead: `docker run --user 10001 -e ENGINE_BACKEND=none …`.
ENTRYPOINT ["voltrun"]
CMD ["server"]
