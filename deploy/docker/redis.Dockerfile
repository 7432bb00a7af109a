# Redis from Debian's package, for registries that serve no redis image (build-offline.sh).
#   docker build -f deploy/docker/redis.Dockerfile --build-arg BASE=gpo-base:bookworm -t gpo-redis:bookworm deploy/docker
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
