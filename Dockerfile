# BuildKit (Docker 23 and later build with it by default): RUN --mount and COPY --chmod.
# One image for the aggregation server and every node: the entry point is the
# `consortium` CLI, the container's command picks the role (see compose.yaml,
# deploy/kubernetes/ and docs/packaging.md). No key, certificate, token or
# password is ever copied in: they arrive at run time in volumes or secrets.
#
#   docker build -t consortium:0.1.0 .
#   docker run --rm consortium:0.1.0 --help

# ---- stage 1: build the wheel and every dependency's wheel ----------------------------
FROM python:3.11.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
RUN pip install --no-cache-dir "build==1.2.2.post1"
COPY pyproject.toml README.md ./
COPY src ./src
# the package's wheel, then a wheelhouse of it with the extras a deployment needs,
# so the runtime stage installs offline from exactly what was resolved here
# (named by its file: a plain "consortium" could resolve to another project on PyPI)
RUN python -m build --wheel --outdir /dist . \
    && wheel="$(ls /dist/consortium-*.whl)" \
    && pip wheel --no-cache-dir --wheel-dir /wheels "${wheel}[deploy,control,tracking,sklearn]"

# ---- stage 2: the runtime ----------------------------------------------------------------
FROM python:3.11.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="consortium" \
      org.opencontainers.image.description="Cross-silo federated learning: server and node" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib

# the version pin is the wheelhouse itself (--no-index: only what stage 1 built)
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels \
        "consortium[deploy,control,tracking,sklearn]"

# a fixed uid/gid (10001) so volumes, Kubernetes' fsGroup and the systemd units agree
RUN groupadd --system --gid 10001 consortium \
    && useradd --system --uid 10001 --gid consortium --no-create-home \
        --home-dir /var/lib/consortium --shell /usr/sbin/nologin consortium \
    && install -d -o consortium -g consortium -m 0700 \
        /var/lib/consortium /var/lib/consortium/data /var/lib/consortium/keys

COPY --chmod=0755 deploy/docker/healthcheck.py /usr/local/lib/consortium/healthcheck.py

# numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd
USER 10001:10001
WORKDIR /var/lib/consortium

# gRPC (nodes dial in) and the REST API (--http)
EXPOSE 9092 8080

# The server's REST health endpoint when --http is on, else a TCP connect to its gRPC
# port; a node (it listens on nothing) by the status file in its work folder: healthy
# until a minute after the server last answered it (see healthcheck.py).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["python", "/usr/local/lib/consortium/healthcheck.py"]

ENTRYPOINT ["consortium"]
CMD ["--help"]
