# nppd for a CUDA GPU host: the same server as docker/cpu.Dockerfile, built
# against the CUDA libtorch of a PyTorch image, and a CUDA runtime image
# that keeps only the libraries nppd links (found by ldd). Defaults to
# --device cuda:0. Keep in step with cpu.Dockerfile (docker/README.md).
#   docker build -f docker/cuda.Dockerfile -t nppd:cuda .
#   docker run --gpus all -p 8080:8080 -v /data/gpt2:/models/gpt2:ro \
#              -v nppd-state:/var/lib/nppd -e NPP_MODEL=gpt2=/models/gpt2 nppd:cuda
# Not built by this project's CI (no CUDA base image is reachable there).
ARG PYTORCH_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

FROM ${PYTORCH_IMAGE} AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake make g++ pkg-config ca-certificates \
      libjansson-dev libpcre2-dev libgraphviz-dev libmicrohttpd-dev libuv1-dev libsqlite3-dev \
      nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# one layer (.dockerignore leaves out tests, docs, benchmarks and builds)
COPY . .
RUN scripts/fetch-vocab.sh \
    && TORCH_PREFIX=$(python -c 'import torch; print(torch.utils.cmake_prefix_path)') \
    && cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
         -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" \
         -DNPP_DEFAULT_MODEL=/opt/npp/models/induction -DNPP_VOCAB_DIR=/src/vocab \
    && cmake --build /build -j"$(nproc)" --target nppd npp \
    && mkdir -p /opt/npp/bin /opt/npp/lib /opt/npp/models \
    && cp /build/nppd /build/npp /opt/npp/bin/ \
    && cp -r models/induction /opt/npp/models/ \
    && TORCH_LIB=$(python -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
    && SKIP="$TORCH_LIB:/opt/conda/lib:/usr/local/cuda" \
    && ldd /build/nppd /build/npp | awk '/=> \//{print $3}' | sort -u \
         | grep -E "^($TORCH_LIB|/opt/conda/lib)/" | xargs -r cp -L -t /opt/npp/lib/ \
    && SKIP="$SKIP" scripts/runtime-packages.sh /build/nppd /build/npp > /opt/npp/runtime-packages \
    && wc -l /opt/npp/runtime-packages

FROM ${CUDA_RUNTIME_IMAGE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /opt/npp/runtime-packages /tmp/runtime-packages
RUN apt-get update \
    && apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages) curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
    && useradd --system --uid 10001 --home-dir /var/lib/nppd --create-home nppd
COPY --from=build /opt/npp /opt/npp
# every library found but the driver's (the NVIDIA runtime mounts libcuda)
RUN ! ldd /opt/npp/bin/nppd | grep 'not found' | grep -v libcuda
ENV PATH=/opt/npp/bin:$PATH \
    LD_LIBRARY_PATH=/opt/npp/lib \
    NPP_LISTEN=0.0.0.0:8080 \
    NPP_STATE_DIR=/var/lib/nppd/state \
    NPP_DEVICE=cuda:0
USER nppd
WORKDIR /var/lib/nppd
VOLUME ["/var/lib/nppd"]
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${NPP_LISTEN##*:}/readyz" > /dev/null || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["nppd"]
