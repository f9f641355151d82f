# moto's S3 server (from PyPI) in place of MinIO, listening on MinIO's port 9000; its venv's
# python also creates the bucket (the `bucket` service) with boto3, which moto brings.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG MOTO_VERSION
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# the secret pip_config: a pip.conf naming the wheels make test-image serves (see the Dockerfile)
RUN --mount=type=secret,id=pip_cert --mount=type=secret,id=pip_config \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && if [ -s /run/secrets/pip_config ]; then export PIP_CONFIG_FILE=/run/secrets/pip_config; fi \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/moto \
    && /opt/moto/bin/pip install "moto[server]==${MOTO_VERSION}" \
    && useradd --system --no-create-home moto
ENV PATH=/opt/moto/bin:$PATH
USER moto
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
