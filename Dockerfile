# promptserve on a CUDA host: `docker compose up` (see docker-compose.yml), or
#   docker build -t promptserve . && docker run --gpus all -p 8000:8000 promptserve
#
# CUDA 13 throughout. torch 2.14.1 (+cu130) brings the CUDA 13 libraries as pip packages
# (nvidia-cublas 13, nvidia-cudnn-cu13, ...), and onnxruntime-gpu 1.31.1 is built against CUDA 13.0
# and cuDNN 9: its CUDA provider links libcublas.so.13, libcublasLt.so.13, libcudart.so.13 and
# libcudnn.so.9. So the base is only CUDA 13's `base` flavour (the runtime plus the container
# toolkit's settings: NVIDIA_REQUIRE_CUDA=cuda>=13.0 refuses an older driver at start), and the
# one copy of every other CUDA library is torch's, registered with the dynamic linker below so
# that ONNX Runtime's provider finds the same files torch loads. TensorRT is not in the image.
#
# BASE_IMAGE selects another base with apt and Python 3.11 in its packages: `make test-image`
# builds on a Debian bookworm made locally with debootstrap (no registry there), see tests/deploy.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu22.04

FROM ${BASE_IMAGE} AS deps
# PIP_OPTIONS: extra pip arguments. Two optional secrets, never layers nor cache keys: `pip_cert`,
# the CA bundle of a TLS-intercepting proxy, and `pip_config`, a pip.conf (make test-image's says
# `no-index` and `find-links` to the wheels it serves from disk on a port that changes every run)
ARG PIP_OPTIONS=
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first, so code and README edits do not reinstall torch: an empty README and
# empty packages under the same folders (pyproject.toml maps them to promptserve.*) let pip
# resolve the project's metadata
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_config \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && if [ -s /run/secrets/pip_config ]; then export PIP_CONFIG_FILE=/run/secrets/pip_config; fi \
    && touch README.md \
    && for p in models models/methods training training/synthetic service service/api \
        service/api/routes service/api/schemas service/classify service/jobs service/remote client; do \
        mkdir -p "$p" && touch "$p/__init__.py"; done \
    && pip install $PIP_OPTIONS '.[cluster,tracing]' && pip uninstall -y promptserve \
    && rm -rf build *.egg-info README.md models training service client \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# the dependencies as the image holds them: no pip (one layer of several GB, rebuilt only
# when pyproject.toml changes)
FROM deps AS venv
RUN rm -rf /opt/venv/lib/python3.11/site-packages/pip* /opt/venv/bin/pip*

# the project alone, staged under its final paths (a small layer for every code change)
FROM deps AS project
COPY README.md ./
COPY models ./models
COPY training ./training
COPY service ./service
COPY client ./client
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_config \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && if [ -s /run/secrets/pip_config ]; then export PIP_CONFIG_FILE=/run/secrets/pip_config; fi \
    && pip install $PIP_OPTIONS --no-deps . \
    && find /opt/venv -name __pycache__ -prune -exec rm -rf {} + \
    && site=lib/python3.11/site-packages \
    && mkdir -p /stage/opt/venv/$site /stage/opt/venv/bin \
    && mv /opt/venv/$site/promptserve /opt/venv/$site/promptserve-*.dist-info \
        /stage/opt/venv/$site/ \
    && mv /opt/venv/bin/promptserve /stage/opt/venv/bin/

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 curl \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin promptserve \
    && mkdir -p /data/store /data/cache \
    && chown -R promptserve:promptserve /data
COPY --from=venv /opt/venv /opt/venv
COPY --from=project /stage/ /
# torch's CUDA 13 libraries for every process, ONNX Runtime's CUDA provider included
RUN find /opt/venv/lib/python3.11/site-packages/nvidia -name 'lib*.so*' -printf '%h\n' \
        | sort -u > /etc/ld.so.conf.d/promptserve-cuda.conf \
    && ldconfig
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
