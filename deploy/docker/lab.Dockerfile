# fedlab lab node image: the lab's training worker and its Flower SuperNode.
# Build from the repository root:  docker build -f deploy/docker/lab.Dockerfile -t fedlab-lab .
# Run:  docker run --init -v $PWD/kit:/kit:ro -v $PWD/data:/data:ro fedlab-lab \
#           client /kit --data /data/<your file>
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
# An unprivileged user; the kit's private keys must be readable by it (mode 600, owner 10001).
# The data and the kit are mounted read-only; the node writes only to /tmp.
RUN useradd --uid 10001 --create-home fedlab
USER fedlab
ENTRYPOINT ["fedlab"]
CMD ["client", "/kit", "--data", "/data/lab.csv"]
