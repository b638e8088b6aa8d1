# insession in one image: the server, the stream worker and every other command.
#   docker build -t insession .
#   docker run --rm -p 8000:8000 insession                  # the demo (synthetic shop, then serve)
#   docker run --rm insession serve --help                  # any command: the entrypoint is `insession`
# compose.yaml runs Redis, two servers and two workers from it (docs/operations.md).

# Wheels are built apart: hnswlib compiles from source and needs a compiler the image does not keep.
FROM python:3.11-slim AS wheels
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[redis]"

FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    INSESSION_DATA_DIR=/data
# LightGBM's OpenMP runtime.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=wheels /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "insession[redis]" && rm -rf /wheels
# Not root: the data and the shared model directory belong to the service user.
RUN useradd --create-home --uid 10001 insession && mkdir -p /data /shared && chown insession /data /shared
USER insession
VOLUME /data
EXPOSE 8000
# Readiness: the state is loaded and the store takes writes (docs/operations.md).
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]
ENTRYPOINT ["insession"]
CMD ["demo", "--host", "0.0.0.0", "--port", "8000"]
