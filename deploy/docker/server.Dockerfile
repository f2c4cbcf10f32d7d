# fedlab aggregation server image.
# Build from the repository root:  docker build -f deploy/docker/server.Dockerfile -t fedlab-server .
# Run:  docker run --init -p 9092:9092 -v $PWD/federation/server:/kit:ro -v fedlab-state:/state \
#           -v $PWD/runs:/runs fedlab-server
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fedlab ./fedlab
COPY server ./server
COPY client ./client
RUN python -m venv /opt/fedlab && /opt/fedlab/bin/pip install --no-cache-dir /src

FROM python:3.11-slim
COPY --from=build /opt/fedlab /opt/fedlab
ENV PATH=/opt/fedlab/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=3
# An unprivileged user; the kit's private key must be readable by it (mode 600, owner 10001).
RUN useradd --uid 10001 --create-home fedlab && mkdir -p /state /runs && chown fedlab /state /runs
USER fedlab
VOLUME ["/state", "/runs"]
EXPOSE 9092
ENTRYPOINT ["fedlab"]
CMD ["server", "/kit", "--state", "/state", "--out", "/runs", "--listen", "0.0.0.0:9092"]
