# ctnode container image. There is no Docker engine on the development machines: this file is
# checked statically by tests/unit/test_packaging.py.
#
#   docker build -t ctnode .
#   docker run -d --name ctnode -p 4006:4006 \
#     -v ctnode-data:/var/lib/ctnode -v "$PWD/peers:/etc/ctnode/peers:ro" ctnode
#   docker kill --signal=HUP ctnode    # reload peers (associations in progress are kept)
#   docker stop -t 40 ctnode           # SIGTERM; longer than node.shutdown_grace (30 s)
#
# The virtualenv is built at /opt/ctnode and copied to the same path in the final stage, so its
# scripts' #! lines and the interpreter symlink (same base image) stay valid.

FROM python:3.11-slim-bookworm AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/ctnode
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY migrations ./migrations
RUN /opt/ctnode/bin/pip install '.[codecs]'

FROM python:3.11-slim-bookworm
RUN groupadd --system ctnode \
 && useradd --system --gid ctnode --home-dir /var/lib/ctnode --no-create-home \
      --shell /usr/sbin/nologin --comment "ctnode DICOM node" ctnode \
 && install -d -o ctnode -g ctnode -m 0750 /var/lib/ctnode \
 && install -d -o root -g root -m 0755 /etc/ctnode /etc/ctnode/peers
COPY --from=builder /opt/ctnode /opt/ctnode
COPY config/docker.yaml /etc/ctnode/ctnode.yaml
ENV PATH=/opt/ctnode/bin:$PATH \
    CTNODE_CONFIG=/etc/ctnode/ctnode.yaml \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER ctnode:ctnode
WORKDIR /var/lib/ctnode
VOLUME ["/var/lib/ctnode"]
EXPOSE 4006
STOPSIGNAL SIGTERM
# A real C-ECHO to this node on 127.0.0.1 (allowed as our own AE title from loopback only).
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
  CMD ["ctnode", "echo", "--self"]
ENTRYPOINT ["ctnode"]
CMD ["run"]
