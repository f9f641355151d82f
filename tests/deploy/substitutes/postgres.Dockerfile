# Postgres from Debian's packages, in place of the official `postgres` image: the same
# POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data under /var/lib/postgresql/data,
# pg_isready on the PATH, password logins over the network.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql \
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/* /etc/postgresql/* \
    && ln -s /usr/lib/postgresql/*/bin /usr/local/lib/postgres-bin \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY postgres-start.sh /usr/local/bin/postgres-start
ENV PATH=/usr/local/lib/postgres-bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
CMD ["postgres-start"]
