# The same steps as the Makefile: `make install`, then `make serve`, as a non-root user.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends make git libgomp1 \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 icans
WORKDIR /app
COPY --chown=icans:icans . /app
USER icans

RUN make install

EXPOSE 8000
# Listening on every interface, so API keys are required (AUTH=on): create one with
# `docker exec <container> .venv/bin/icans-risk keys create --client NAME --scope score`.
# Without MLFLOW_TRACKING_URI it trains a champion on the synthetic cohort if the store has none;
# point MLFLOW_TRACKING_URI at a shared tracking server to serve a registered champion instead.
# `icans-risk serve` enforces the edge limits itself (head size and fields, request line, time to
# send head and body, connections per worker: ICANS_HTTP_*), so the container needs no proxy for them.
CMD ["make", "serve", "HOST=0.0.0.0", "PORT=8000", "AUTH=on"]
