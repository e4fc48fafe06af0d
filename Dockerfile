# The sidecar's image: built with the Rust toolchain and cmake (Pingora's
# build needs it), run from a distroless base as a non-root user.
#   docker build -t wedsync-sidecar:dev .
FROM rust:1-bookworm AS build
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin wedsync-sidecar \
 && strip target/release/wedsync-sidecar

# glibc, CA roots, a nonroot user (65532) and nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/wedsync-sidecar /usr/local/bin/wedsync-sidecar
USER 65532:65532
EXPOSE 15001 8080 9901
ENTRYPOINT ["/usr/local/bin/wedsync-sidecar"]
CMD ["run", "-c", "/etc/wedsync-sidecar/sidecar.yaml"]
