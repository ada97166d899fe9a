# The application image: every `journey` service (worker, collector, pos) runs from it.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY loadtest ./loadtest
COPY config ./config
RUN pip install . && useradd --create-home journey && mkdir -p /data && chown journey /data
USER journey
ENV JOURNEY_WORKER_DATA_DIR=/data
ENTRYPOINT ["journey"]
CMD ["--help"]
