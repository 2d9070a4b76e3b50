"""Processes that tests start: `accelerate launch` of two on CPU (torchrun with gloo, each launch on a port of its
own), and a user's process, in which this project is not importable."""

import os
import socket
import sys

OUTSIDE_PROJECT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "outside_project")


def user_env(*drop: str, **overrides: str) -> dict[str, str]:
    """The environment of a user's process: `os.environ` without `drop`, with `overrides`, and this project's editable
    install hidden (`outside_project/sitecustomize.py`), so that BLSP loads only from a checkpoint's code."""
    env = {key: value for key, value in os.environ.items() if key not in drop}
    return {**env, **overrides, "PYTHONPATH": OUTSIDE_PROJECT}


def free_port() -> int:
    """A TCP port free on this machine now (so launches running side by side do not meet on torchrun's default)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_process_launch(*launcher: str) -> list[str]:
    """The command that starts two processes of a script, e.g. `[*two_process_launch(), script, *flags]`.

    `launcher` defaults to `--multi_gpu`, which starts torchrun (gloo on CPU): `accelerate launch --cpu` starts only
    one process unless MPI is set up. An FSDP launch passes `--config_file configs/fsdp.yaml` instead.
    """
    launcher = launcher or ("--multi_gpu", "--num_machines", "1")
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2"]
    return command + ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
