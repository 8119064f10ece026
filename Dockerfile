# syntax=docker/dockerfile:1
# badgateway-exporter: a small Debian 12 image running as a non-root user.
# The image is not built in CI (no Docker engine there); tests/test_packaging.py checks that its
# install steps are the commands scripts/setup runs and lints the shell of every RUN with shellcheck.

FROM debian:12-slim AS build
# the same apt-get and pip commands as scripts/setup (runtime subset: no test stack, no [dev] extra;
# the C compiler builds the native log scan, exporter/logs/_scan.c, and stays in this stage)
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates python3 python3-venv gcc libc6-dev python3-dev \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml README.md /src/
COPY exporter /src/exporter
WORKDIR /src
RUN python3 -m venv /opt/badgateway-exporter \
 && /opt/badgateway-exporter/bin/python -m pip install -q --disable-pip-version-check --upgrade pip \
 && /opt/badgateway-exporter/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir . \
 && /opt/badgateway-exporter/bin/python -m pip uninstall -q -y pip setuptools \
 && find /opt/badgateway-exporter -name __pycache__ -prune -exec rm -rf {} +

FROM debian:12-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="badgateway-exporter" \
      org.opencontainers.image.description="Prometheus exporter and diagnosis of nginx 502/504 (PHP-FPM, Python backends)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.documentation="docs/security.md" \
      org.opencontainers.image.base.name="docker.io/library/debian:12-slim"
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ca-certificates python3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --user-group badgateway-exporter \
 && install -d -m 0750 -o root -g badgateway-exporter /etc/badgateway-exporter
COPY --from=build /opt/badgateway-exporter /opt/badgateway-exporter
# Groups adm (4: logs) and www-data (33: PHP-FPM socket) are given at run time with --group-add.
USER badgateway-exporter
EXPOSE 9502
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/badgateway-exporter/bin/python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9502/-/healthy', timeout=4).status != 200)"]
ENTRYPOINT ["/opt/badgateway-exporter/bin/badgateway-exporter"]
CMD ["--config", "/etc/badgateway-exporter/config.yml"]
