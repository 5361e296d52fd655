# TTP Gateway: one process serving the gPAS and dispatcher endpoints.
#   docker build -t ttp-gateway .
#   docker run -p 8080:8080 -v ttp-data:/data ttp-gateway
# Configure with a mounted TOML file (TTP_GATEWAY_CONFIG) and TTP_GATEWAY__* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY plugins plugins
COPY backends backends
COPY config config
RUN pip install . && useradd --system --uid 10001 --home /data ttp && mkdir -p /data && chown ttp /data

USER ttp
VOLUME /data
EXPOSE 8080
ENV TTP_GATEWAY_CONFIG=/app/config/demo.toml \
    TTP_GATEWAY__SERVER__HOST=0.0.0.0 \
    TTP_GATEWAY__STORAGE__URL=sqlite:////data/ttp-gateway.db

HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status != 200)"
CMD ["ttp-gateway", "serve"]
