# python serve.py in a container, on the CPU. Build from the repository root:
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU-only wheel index> -t imgclf-serve .
#   docker run --stop-timeout 45 -p 5000:5000 \
#     -v "$PWD/data/trained_model:/app/data/trained_model:ro" imgclf-serve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# CPU-only torch first: the default wheels carry CUDA libraries (gigabytes) a CPU server never uses.
ARG TORCH_INDEX_URL
RUN test -n "$TORCH_INDEX_URL" || { echo "pass --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index>"; exit 1; }
RUN pip install torch torchvision --index-url "$TORCH_INDEX_URL"

COPY pyproject.toml README.md ./
COPY imgclf ./imgclf
RUN pip install .
COPY conf ./conf
COPY serve.py ./

RUN useradd --system --no-create-home imgclf
USER imgclf

EXPOSE 5000
# serve.py drains on SIGTERM (shutdown_timeout, 30 s by default): give docker stop more than that.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["python", "serve.py"]
