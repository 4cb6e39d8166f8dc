# nginx in front of the nppd replicas (docker/nginx.conf), for compose.yaml.
FROM debian:bookworm-slim
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /run/nginx-npp
COPY docker/nginx.conf /etc/nginx/npp.conf
STOPSIGNAL SIGQUIT
ENTRYPOINT ["nginx", "-c", "/etc/nginx/npp.conf", "-p", "/run/nginx-npp", "-g", "daemon off;"]
