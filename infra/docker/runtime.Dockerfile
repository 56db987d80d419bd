# The replica image: `python -m runtime` (and `python -m runtime.pool` for the Kubernetes warm pool).
# Build from the repository root:
#   docker build -f infra/docker/runtime.Dockerfile -t zeroserve-runtime:0.1.0 .
# The base image is pinned through a build argument (a tag here; pin a digest in your registry).
# checkov:skip=CKV_DOCKER_7: the base image is the build argument PYTHON_IMAGE, whose default is a pinned tag (checked by tests/infra); checkov does not substitute ARG values
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY autoscaler ./autoscaler
COPY router ./router
# Wheels only, into a virtual environment copied whole into the final stage: no compiler, no pip cache.
RUN python -m venv /opt/zeroserve \
    && /opt/zeroserve/bin/pip install --no-cache-dir --only-binary=:all: ".[mlflow]"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/zeroserve /opt/zeroserve
RUN groupadd --system --gid 10001 zeroserve \
    && useradd --system --uid 10001 --gid zeroserve --home-dir /var/lib/zeroserve --create-home zeroserve
ENV PATH=/opt/zeroserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ZEROSERVE_HOME=/var/lib/zeroserve \
    ZEROSERVE_CACHE_DIR=/var/cache/zeroserve
USER 10001
EXPOSE 8080
# A replica answers its readiness route once its model is loaded and warm.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/v2/health/live', timeout=2).status != 200)"]
ENTRYPOINT ["python", "-m", "runtime"]
CMD ["--help"]
