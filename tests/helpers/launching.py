"""`accelerate launch` of two processes on CPU for tests: torchrun with gloo, each launch on a port of its own."""

import socket
import sys


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
