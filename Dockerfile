# TraceHub hub image: one image, three roles (selected by the command):
#   tracehub api --host 0.0.0.0 --port 8000   (default)
#   tracehub worker
#   tracehub migrate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

RUN groupadd --system --gid 10001 tracehub \
 && useradd --system --uid 10001 --gid tracehub --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin tracehub

COPY . /app

RUN pip install --no-cache-dir . \
 && mkdir -p /app/var \
 && chown tracehub:tracehub /app/var

USER tracehub

EXPOSE 8000

# Meaningful for the API role only; docker-compose.yml disables it for the worker and migrate jobs.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status == 200 else 1)"]

CMD ["tracehub", "api", "--host", "0.0.0.0", "--port", "8000"]
