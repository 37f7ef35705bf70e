# torchbearer on NVIDIA GPUs: PyPI's torch wheels bring their own CUDA runtime; the host needs the driver and
# the NVIDIA container toolkit (`docker run --gpus all`).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 TORCHBEARER_PROJECT=/project
RUN apt-get update && apt-get install -y --no-install-recommends make procps && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/torchbearer
COPY pyproject.toml README.md ./
COPY torchbearer ./torchbearer
RUN pip install .

# The project folder (queue/, runs/, data/, masks/, configs/, state/) is a volume, so nothing is lost with the container.
WORKDIR /project
VOLUME ["/project"]
ENTRYPOINT ["torchbearer"]
CMD ["daemon"]
