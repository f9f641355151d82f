# promptserve on a CUDA host: `docker compose up` (see docker-compose.yml), or
#   docker build -t promptserve . && docker run --gpus all -p 8000:8000 promptserve
# CUDA 12 + cuDNN 9 is what the onnxruntime-gpu and torch wheels are built against.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first, so code edits do not reinstall torch
COPY pyproject.toml README.md ./
RUN for p in models models/methods training training/synthetic service service/api \
        service/api/routes service/classify service/jobs service/remote; do \
        mkdir -p "$p" && touch "$p/__init__.py"; done \
    && pip install '.[cluster]' && pip uninstall -y promptserve
COPY models ./models
COPY training ./training
COPY service ./service
RUN pip install --no-deps .

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin promptserve \
    && mkdir -p /data/store /data/cache \
    && chown -R promptserve:promptserve /data
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/data/cache/huggingface \
    PROMPTSERVE_STORE=/data/store \
    PROMPTSERVE_HOST=0.0.0.0 \
    PROMPTSERVE_PORT=8000 \
    PROMPTSERVE_DEVICE=auto
USER promptserve
WORKDIR /home/promptserve
VOLUME ["/data/store", "/data/cache"]
EXPOSE 8000
# ready = the default classifier is loaded and warmed; the first start also creates it
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8000/health/ready || exit 1
CMD ["promptserve", "serve"]
