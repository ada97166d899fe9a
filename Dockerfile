# The application image: every `journey` service (worker, collector, dispatcher, pos)
# runs from it. The wheel is built in a first stage and installed in the second, so
# the image carries the installed package (with its packaged defaults) and no source.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stream ./stream
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN pip install /wheels/*.whl && rm -rf /wheels \
    && useradd --create-home journey \
    && mkdir -p /app /data && chown journey /app /data
USER journey
# Relative paths in settings (var/...) resolve here; state lives under /data.
WORKDIR /app
ENV JOURNEY_WORKER_DATA_DIR=/data
ENTRYPOINT ["journey"]
CMD ["--help"]
