# syntax=docker/dockerfile:1
#
# Container images for envoy_redis_cluster (libenvoy_redis_cluster.so).
#
#   docker build --target module      -t REGISTRY/envoy-redis-cluster/module:0.1.0 .
#   docker build --target envoy       -t REGISTRY/envoy-redis-cluster/envoy:v1.40.0-0.1.0 .
#   docker build --target istio-proxy --build-arg ISTIO_PROXY_IMAGE=docker.io/istio/proxyv2:<your mesh's version> \
#                                     -t REGISTRY/envoy-redis-cluster/istio-proxy:<version>-0.1.0 .
#
# Targets:
#   module        busybox + /libenvoy_redis_cluster.so only: for an init
#                 container that copies the .so into a shared emptyDir
#                 (`cp /libenvoy_redis_cluster.so /modules/`).
#   module-scratch  the same file in an otherwise empty image (Kubernetes
#                 image volumes, or `COPY --from=` in your own Dockerfiles).
#   istio-proxy   istio/proxyv2 + the module (pod annotation
#                 sidecar.istio.io/proxyImage). Use the exact istio-proxy
#                 version of your mesh.
#   envoy         envoyproxy/envoy:v1.40.0 + the module (Envoy Gateway's
#                 EnvoyProxy container.image, or plain Envoy). Default target.
#
# In the Envoy images the module sits at
# /usr/local/lib/envoy/modules/libenvoy_redis_cluster.so and
# ENVOY_DYNAMIC_MODULES_SEARCH_PATH points there, so filter configs can load it
# by name: dynamic_module_config: { name: envoy_redis_cluster }.
#
# The .so is built against glibc of the build image (Debian bookworm, 2.36) and
# needs only libc and libgcc_s at run time; both Envoy images are newer.

ARG RUST_IMAGE=rust:1-bookworm
ARG ENVOY_IMAGE=envoyproxy/envoy:v1.40.0
ARG ISTIO_PROXY_IMAGE=docker.io/istio/proxyv2:1.31.0
ARG BUSYBOX_IMAGE=busybox:1.36

# --- build -------------------------------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Manifests first: the dependency download is cached while only src/ changes.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo "" > src/lib.rs && cargo fetch --locked
COPY src ./src
RUN cargo build --release --locked --lib \
    && install -D -m 0644 target/release/libenvoy_redis_cluster.so /out/libenvoy_redis_cluster.so

# --- module: just the .so, with `cp` for init containers -------------------
FROM ${BUSYBOX_IMAGE} AS module
COPY --from=build /out/libenvoy_redis_cluster.so /libenvoy_redis_cluster.so
# Nothing to run: init containers give their own command.
USER 65532:65532
CMD ["ls", "-l", "/libenvoy_redis_cluster.so"]

# --- module-scratch: the .so and nothing else -------------------------------
FROM scratch AS module-scratch
COPY --from=build /out/libenvoy_redis_cluster.so /libenvoy_redis_cluster.so

# --- istio-proxy: Istio's sidecar image with the module ----------------------
FROM ${ISTIO_PROXY_IMAGE} AS istio-proxy
COPY --from=build /out/libenvoy_redis_cluster.so /usr/local/lib/envoy/modules/libenvoy_redis_cluster.so
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy/modules

# --- envoy: stock Envoy with the module (default target) --------------------
FROM ${ENVOY_IMAGE} AS envoy
COPY --from=build /out/libenvoy_redis_cluster.so /usr/local/lib/envoy/modules/libenvoy_redis_cluster.so
ENV ENVOY_DYNAMIC_MODULES_SEARCH_PATH=/usr/local/lib/envoy/modules
