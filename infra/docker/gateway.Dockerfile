# The gateway image: `zeroserve serve` (control plane, data plane, autoscaler, Kubernetes backend).
# Build from the repository root:
#   docker build -f infra/docker/gateway.Dockerfile -t zeroserve-gateway:0.1.0 .
# checkov:skip=CKV_DOCKER_7: the base image is the build argument PYTHON_IMAGE, whose default is a pinned tag (checked by tests/infra); checkov does not substitute ARG values
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runtime ./runtime
COPY autoscaler ./autoscaler
COPY router ./router
RUN python -m venv /opt/zeroserve \
    && /opt/zeroserve/bin/pip install --no-cache-dir --only-binary=:all: ".[kubernetes]"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/zeroserve /opt/zeroserve
RUN groupadd --system --gid 10001 zeroserve \
    && useradd --system --uid 10001 --gid zeroserve --home-dir /var/lib/zeroserve --create-home zeroserve
ENV PATH=/opt/zeroserve/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    ZEROSERVE_HOME=/var/lib/zeroserve \
    ZEROSERVE_LOG_FORMAT=json
USER 10001
EXPOSE 8484
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8484/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["zeroserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8484"]
