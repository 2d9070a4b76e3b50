"""Pytest fixtures running the local Hub of ``hub_server.py`` and pointing Hugging Face libraries at it.

``tests/conftest.py`` registers them (``pytest_plugins``).

- ``local_hub`` (session scope): a running server, as a ``LocalHub`` with ``.url`` and ``.store``;
  ``local_hub.env(hf_home)`` gives the environment variables for a consumer process and
  ``local_hub.run_python(code, hf_home)`` runs Python code in a fresh subprocess with them.
  Set ``LOCAL_HUB_VERBOSE=1`` to log every request to stderr.
- ``hub_env`` (function scope): sets ``HF_ENDPOINT``, ``HF_HUB_DISABLE_XET=1``, ``HF_TOKEN``,
  ``HF_HUB_OFFLINE=0`` and a temporary ``HF_HOME`` for the test, and patches the values that
  ``huggingface_hub``, ``transformers`` and ``datasets`` read from the environment at import time
  (``huggingface_hub.constants.ENDPOINT`` and friends). Yields the ``LocalHub``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .hub_server import HubServer, HubStore

__all__ = ["LocalHub", "hub_env", "local_hub", "patch_hub_modules"]

HUB_TOKEN = "hf_local_test_token"
# Variables that would override HF_HOME or force offline mode in a consumer process.
_OVERRIDDEN = (
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "HF_MODULES_CACHE",
    "HF_XET_CACHE",
    "HF_ASSETS_CACHE",
    "HF_TOKEN_PATH",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "HUGGINGFACE_CO_STAGING",
)


@dataclass
class LocalHub:
    """A running local Hub."""

    server: HubServer

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def store(self) -> HubStore:
        return self.server.store

    def env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """Environment variables pointing a process at this Hub, with caches under ``hf_home``."""
        home = Path(hf_home)
        return {
            "HF_ENDPOINT": self.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": HUB_TOKEN,
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": str(home),
            "HF_HUB_CACHE": str(home / "hub"),
            "HF_DATASETS_CACHE": str(home / "datasets"),
            "HF_MODULES_CACHE": str(home / "modules"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        }

    def subprocess_env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """``os.environ`` without cache/offline overrides, plus ``env(hf_home)``."""
        base = {k: v for k, v in os.environ.items() if k not in _OVERRIDDEN}
        return {**base, **self.env(hf_home)}

    def run_python(self, code: str, hf_home: str | os.PathLike, timeout: float = 120) -> str:
        """Run ``code`` with a fresh interpreter against this Hub; return stdout, fail with its output."""
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=self.subprocess_env(hf_home),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            pytest.fail(f"subprocess failed ({proc.returncode})\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc.stdout


def patch_hub_modules(monkeypatch: pytest.MonkeyPatch, hub: LocalHub, hf_home: str | os.PathLike) -> None:
    """Point this process at ``hub``: env vars plus the module-level copies the libraries made at import."""
    env = hub.env(hf_home)
    for key in _OVERRIDDEN:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    from huggingface_hub import constants, hf_api

    url = hub.url
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    if hasattr(constants, "HF_URL_HOSTS"):  # hosts whose redirects keep the auth header
        monkeypatch.setattr(constants, "HF_URL_HOSTS", frozenset(constants.HF_URL_HOSTS | {"127.0.0.1"}))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", env["HF_HUB_CACHE"])
    monkeypatch.setattr(hf_api.api, "endpoint", url)  # the HfApi behind huggingface_hub.create_repo & co

    if importlib.util.find_spec("datasets") is not None:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_ENDPOINT", url)
        monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)

    if importlib.util.find_spec("transformers") is not None:
        import transformers.utils.hub

        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # rebuilt lazily with the patched ENDPOINT


@pytest.fixture(scope="session")
def local_hub():
    """A local Hub server shared by the whole test session."""
    server = HubServer("127.0.0.1", 0, verbose=bool(os.environ.get("LOCAL_HUB_VERBOSE"))).start()
    try:
        yield LocalHub(server)
    finally:
        server.stop()


@pytest.fixture
def hub_env(local_hub: LocalHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalHub:
    """Point huggingface_hub, transformers and datasets in this process at ``local_hub`` for one test."""
    patch_hub_modules(monkeypatch, local_hub, tmp_path / "hf_home")
    return local_hub
