# CZB Studio on a GPU server: CUDA runtime base, Python 3.11, the same pins as requirements.txt.
# On the GPU host, `torch==2.13.0` resolves to the CUDA build from PyPI (its CUDA libraries come as wheels).
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 CZB_HOME=/data/czb PIP_NO_CACHE_DIR=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common make tini \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt requirements-data.txt pyproject.toml ./
RUN python3.11 -m venv /app/.venv \
 && /app/.venv/bin/pip install pip==25.3 \
 && /app/.venv/bin/pip install -r requirements.txt \
 && /app/.venv/bin/pip install --no-deps -r requirements-data.txt
COPY . .
RUN /app/.venv/bin/pip install --no-build-isolation --no-deps -e . && /app/.venv/bin/czb warmup \
 && touch /app/.venv/.installed \
 && /app/.venv/bin/czb demo --out data/demo.h5ad

VOLUME /data
# The same production start as on a bare server (`make serve`): headless, no tracebacks for users, XSRF on.
# It needs login configured: mount a secrets.toml with an [auth] section at /app/.streamlit/secrets.toml
# (README, "Login"); without one `make serve` refuses to start. CZB_SINGLE_USER=1 (no login) is refused here
# too: it listens on 127.0.0.1 only, and a container's 127.0.0.1 cannot be reached from outside it.
# Streamlit listens on all interfaces of the container; GET /health (workers, queue) stays on the
# container's loopback at 8502 (ask it with `docker exec`). It answers from the first page visit on, so the
# HEALTHCHECK asks Streamlit's own endpoint. tini -g passes `docker stop` on to Streamlit and its workers.
ENV CZB_HOST=0.0.0.0 CZB_PORT=8501 CZB_HEALTH_PORT=8502
EXPOSE 8501
HEALTHCHECK CMD python3.11 -c "import urllib.request; urllib.request.urlopen('http://localhost:8501/_stcore/health')"
ENTRYPOINT ["tini", "-g", "--"]
CMD ["make", "serve"]
