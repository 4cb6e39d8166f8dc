# nppd for a CPU host. Two stages: the build (compilers, -dev packages and
# node for the GPT-2 vocabulary) and the runtime (only the shared libraries
# nppd links, found by ldd in the build stage), as a non-root user, with the
# default model and its vocabulary inside.
#   docker build -f docker/cpu.Dockerfile -t nppd:cpu .
#   docker run -p 8080:8080 -v /data/gpt2:/models/gpt2:ro -v nppd-state:/var/lib/nppd \
#              -e NPP_MODEL=gpt2=/models/gpt2 nppd:cpu
# Every nppd flag is an NPP_* variable (nppd --help). docker/README.md has more.
FROM debian:bookworm-slim AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake make g++ pkg-config ca-certificates \
      libtorch-dev libopenblas0-openmp libjansson-dev libpcre2-dev libgraphviz-dev \
      libmicrohttpd-dev libuv1-dev libsqlite3-dev nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# one layer (.dockerignore leaves out tests, docs, benchmarks and builds)
COPY . .
RUN scripts/fetch-vocab.sh \
    && cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
         -DNPP_DEFAULT_MODEL=/opt/npp/models/induction -DNPP_VOCAB_DIR=/src/vocab \
    && cmake --build /build -j"$(nproc)" --target nppd npp \
    && mkdir -p /opt/npp/bin /opt/npp/models \
    && cp /build/nppd /build/npp /opt/npp/bin/ \
    && cp -r models/induction /opt/npp/models/ \
    && scripts/runtime-packages.sh /build/nppd /build/npp > /opt/npp/runtime-packages \
    && wc -l /opt/npp/runtime-packages

FROM debian:bookworm-slim AS runtime
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /opt/npp/runtime-packages /tmp/runtime-packages
RUN apt-get update \
    && apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages) libopenblas0-openmp \
         curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
    && useradd --system --uid 10001 --home-dir /var/lib/nppd --create-home nppd
COPY --from=build /opt/npp /opt/npp
# every library found, or the build fails here rather than at the first start
RUN ! ldd /opt/npp/bin/nppd /opt/npp/bin/npp | grep 'not found' && /opt/npp/bin/nppd --help > /dev/null
ENV PATH=/opt/npp/bin:$PATH \
    NPP_LISTEN=0.0.0.0:8080 \
    NPP_STATE_DIR=/var/lib/nppd/state \
    NPP_DEVICE=cpu
USER nppd
WORKDIR /var/lib/nppd
VOLUME ["/var/lib/nppd"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${NPP_LISTEN##*:}/readyz" > /dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["nppd"]
