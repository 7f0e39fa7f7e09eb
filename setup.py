"""roboalign_jax: RoboAlign (FAST-token SFT + GRPO alignment of Qwen2.5-VL, then a
flow-matching VLA head) in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="roboalign_jax",
    version="0.1.0",
    description="RoboAlign in JAX: align an MLLM to robot actions with FAST tokens, SFT and GRPO, then train a VLA.",
    packages=find_packages(include=["roboalign_jax", "roboalign_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        # transformers is used for tokenizers, processors and configs only (never torch models).
        "transformers>=5.23,<6",
        "ml-collections>=1.1,<2",
        "absl-py>=2.1,<3",
        "chex>=0.1.90,<0.2",
        "numpy>=2.0,<3",
        "scipy>=1.14,<2",
        # DTW alignment of robot-state sequences for the KNN representation probe (eval/knn_probe.py).
        "dtaidistance>=2.3,<3",
        "tokenizers>=0.22,<1",
        "safetensors>=0.5,<1",
        "tensorboardX>=2.6,<3",
        "tqdm>=4.66,<5",
        "pillow>=10,<13",
        "matplotlib>=3.9,<4",
        # Parquet files of the MLLM benchmarks (MMStar, BLINK) as published on the HF Hub.
        "pyarrow>=17,<27",
        # The policy server (roboalign_jax/serving): openpi's websocket + msgpack protocol.
        "websockets>=15,<17",
        "msgpack>=1.0.5,<2",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-timeout>=2.3,<3",
            # `make test TEST_WORKERS=2` runs the suite on two workers (one test file each at a time).
            "pytest-xdist>=3.6,<4",
            "portpicker>=1.6,<2",  # free ports for the multi-process test
            # The CPU build on the developers' disk; used only for parity tests against HF transformers.
            "torch==2.13.0",
            "nbclient>=0.10,<1",
            "nbformat>=5.10,<6",
            "ipykernel>=6.29,<8",
            # The GR00T N1.5 action head reference (parity tests): lerobot's groot/action_head modules
            # need diffusers and lerobot.utils' draccus; lerobot itself is installed --no-deps (Makefile).
            "diffusers>=0.35,<0.36",
            "draccus==0.10.0",
            # openpi-client (the real client the serving tests talk to) is installed --no-deps (Makefile):
            # its metadata pins numpy<2. Its runtime imports beyond ours: dm-tree, typing_extensions.
            "dm-tree>=0.1.8,<0.2",
            "typing_extensions>=4.6,<5",
        ],
        # TensorFlow is needed only to write or convert TFDS datasets, never in the training path.
        "tf": ["tensorflow-cpu>=2.21,<3"],
        "gpu": ["jax[cuda12]>=0.10,<0.11"],
        "sim": [],
    },
)
