"""The local Hub of tests/helpers/hub_server.py works with huggingface_hub, transformers and datasets.

Uploads run in this process (through the ``hub_env`` fixture); downloads run in a fresh subprocess
with only environment variables pointing at the server, as a user's script would.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.helpers import hub_server

REMOTE_CONFIG_CODE = """
from transformers import PretrainedConfig


class TinyConfig(PretrainedConfig):
    model_type = "tiny-remote"

    def __init__(self, width=4, **kwargs):
        self.width = width
        super().__init__(**kwargs)
"""
REMOTE_MODEL_CODE = """
import torch
from transformers import PreTrainedModel

from .configuration_tiny import TinyConfig


class TinyModel(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.lin = torch.nn.Linear(config.width, config.width)
        self.post_init()

    def forward(self, x):
        return self.lin(x)
"""


def _sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _request(url: str, method: str = "GET", headers: dict | None = None):
    """(status, headers, body) of a raw HTTP request, errors included."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def _write(path, data: bytes) -> bytes:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def test_upload_and_download_files(hub_env, tmp_path):  # noqa: F811
    """create_repo, upload_folder/upload_file/create_commit with regular + LFS files, then downloads."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, create_repo

    api = HfApi()
    url = create_repo("alice/files", exist_ok=True)
    assert url.repo_id == "alice/files" and create_repo("alice/files", exist_ok=True).repo_id == "alice/files"
    assert create_repo("no-namespace", exist_ok=True).repo_id == "user/no-namespace"
    api.delete_repo("user/no-namespace")
    assert not api.repo_exists("user/no-namespace") and api.repo_exists("alice/files")

    folder = tmp_path / "folder"
    files = {
        "config.json": _write(folder / "config.json", b'{"hidden_size": 16}'),
        "sub/notes.txt": _write(folder / "sub" / "notes.txt", b"hello\n"),
        "model.safetensors": _write(folder / "model.safetensors", os.urandom(3 * 1024 * 1024)),
    }
    api.upload_folder(repo_id="alice/files", folder_path=str(folder), commit_message="folder")
    files["blob.dat"] = b"\0binary\0" * 10
    api.upload_file(path_or_fileobj=files["blob.dat"], path_in_repo="blob.dat", repo_id="alice/files")
    files["extra.txt"] = b"extra"
    info = api.create_commit(
        "alice/files",
        [CommitOperationAdd("extra.txt", files["extra.txt"]), CommitOperationDelete("sub/notes.txt")],
        commit_message="add extra, delete notes",
    )
    del files["sub/notes.txt"]

    stored = hub_env.store.get("model", "alice/files").branches["main"].files
    assert stored["model.safetensors"].lfs and stored["blob.dat"].lfs
    assert not stored["config.json"].lfs and not stored["extra.txt"].lfs
    assert sorted(api.list_repo_files("alice/files")) == sorted([".gitattributes", *files])
    model_info = api.model_info("alice/files", files_metadata=True)
    assert model_info.sha == info.oid
    sizes = {s.rfilename: s.size for s in model_info.siblings}
    assert sizes["model.safetensors"] == 3 * 1024 * 1024
    assert api.file_exists("alice/files", "config.json") and not api.file_exists("alice/files", "sub/notes.txt")
    titles = [c.title for c in api.list_repo_commits("alice/files")]
    assert titles == ["add extra, delete notes", "Upload blob.dat with huggingface_hub", "folder", "initial commit"]

    code = f"""
import hashlib, json, os
from huggingface_hub import HfApi, HfFileSystem, hf_hub_download, snapshot_download
path = snapshot_download("alice/files")
out = {{}}
for root, _, names in os.walk(path):
    for name in names:
        full = os.path.join(root, name)
        out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
single = open(hf_hub_download("alice/files", "config.json", revision="{info.oid}")).read()
fs = HfFileSystem()
with fs.open("alice/files/model.safetensors", "rb", block_size=1024) as f:  # ranged reads
    f.seek(1000)
    chunk = f.read(16).hex()
listing = sorted(fs.ls("alice/files", detail=False))
print(json.dumps({{"files": out, "single": single, "exists": HfApi().file_exists("alice/files", "x"),
                  "chunk": chunk, "ls": listing}}))
"""
    result = json.loads(hub_env.run_python(code, tmp_path / "home").strip().splitlines()[-1])
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    assert {k: v for k, v in result["files"].items() if k != ".gitattributes"} == expected
    assert result["single"] == '{"hidden_size": 16}' and result["exists"] is False
    assert result["chunk"] == files["model.safetensors"][1000:1016].hex()
    assert result["ls"] == [
        f"alice/files/{name}"
        for name in sorted([".gitattributes", "blob.dat", "config.json", "extra.txt", "model.safetensors"])
    ]


def test_resolve_headers_ranges_and_errors(hub_env):  # noqa: F811
    """HEAD/GET on /resolve carry the Hub headers; Range works; errors carry X-Error-Code."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("alice/headers", exist_ok=True)
    big = os.urandom(1000)
    first = api.upload_file(path_or_fileobj=big, path_in_repo="w.safetensors", repo_id="alice/headers").oid
    commit = api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="a/b.txt", repo_id="alice/headers").oid

    base = f"{hub_env.url}/alice/headers/resolve/main"
    status, headers, body = _request(f"{base}/w.safetensors", "HEAD")
    assert status == 200 and body == b"" and headers["X-Repo-Commit"] == commit
    assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(big).hexdigest()}"' and headers["X-Linked-Size"] == "1000"
    assert headers["Content-Length"] == "1000" and headers["Accept-Ranges"] == "bytes"
    status, headers, body = _request(f"{base}/a/b.txt", headers={"Range": "bytes=2-4"})
    assert (status, body, headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
    assert _request(f"{base}/a/b.txt", headers={"Range": "bytes=-3"})[2] == b"789"
    assert _request(f"{base}/a/b.txt", headers={"Range": "bytes=20-"})[0] == 416
    assert "X-Linked-Etag" not in _request(f"{base}/a/b.txt", "HEAD")[1]

    for url, code in [
        (f"{base}/missing.txt", "EntryNotFound"),
        (f"{hub_env.url}/alice/headers/resolve/nobranch/a/b.txt", "RevisionNotFound"),
        (f"{hub_env.url}/alice/nope/resolve/main/a/b.txt", "RepoNotFound"),
        (f"{hub_env.url}/api/models/alice/headers/tree/main/a/b.txt", "EntryNotFound"),
    ]:
        status, headers, _ = _request(url)
        assert (status, headers["X-Error-Code"]) == (404, code), url

    tree = api.list_repo_tree("alice/headers", path_in_repo="a", expand=True)
    (entry,) = list(tree)
    assert entry.path == "a/b.txt" and entry.last_commit.oid == commit
    paths = api.get_paths_info("alice/headers", ["a", "w.safetensors", "nope"])
    assert [type(p).__name__ for p in paths] == ["RepoFolder", "RepoFile"] and paths[1].lfs.size == 1000

    api.create_branch("alice/headers", branch="dev")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id="alice/headers", revision="dev")
    api.create_tag("alice/headers", tag="v1", revision="dev")
    assert "dev.txt" in api.list_repo_files("alice/headers", revision="v1")
    assert "dev.txt" not in api.list_repo_files("alice/headers")
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id="alice/headers", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and "pr.txt" in api.list_repo_files("alice/headers", revision="refs/pr/1")
    refs = api.list_repo_refs("alice/headers")
    assert {b.name for b in refs.branches} == {"main", "dev"} and [t.name for t in refs.tags] == ["v1"]

    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    with pytest.raises(HfHubHTTPError) as err:
        ops = [CommitOperationAdd("x.txt", b"x")]
        api.create_commit("alice/headers", ops, commit_message="stale", parent_commit=first)
    assert err.value.response.status_code == 412


def test_transformers_push_and_from_pretrained(hub_env, tmp_path):  # noqa: F811
    """model/tokenizer push_to_hub, then Auto*.from_pretrained (also trust_remote_code) in a fresh process."""
    import torch
    from huggingface_hub import HfApi
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    model = LlamaForCausalLM(config)
    model.push_to_hub("alice/tiny-llama")
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]"])
    tok.train_from_iterator(["hello world this is a tiny tokenizer"], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    tokenizer.push_to_hub("alice/tiny-llama")
    checksum = float(sum(p.detach().double().sum() for p in model.parameters()))

    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "configuration_tiny.py").write_text(REMOTE_CONFIG_CODE)
    (remote / "modeling_tiny.py").write_text(REMOTE_MODEL_CODE)
    auto_map = {"AutoConfig": "configuration_tiny.TinyConfig", "AutoModel": "modeling_tiny.TinyModel"}
    (remote / "config.json").write_text(json.dumps({"model_type": "tiny-remote", "width": 4, "auto_map": auto_map}))
    save_file(
        {"lin.weight": torch.eye(4), "lin.bias": torch.arange(4.0)},
        str(remote / "model.safetensors"),
        metadata={"format": "pt"},
    )
    HfApi().create_repo("alice/tiny-remote", exist_ok=True)
    HfApi().upload_folder(repo_id="alice/tiny-remote", folder_path=str(remote))

    code = """
import json, torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained("alice/tiny-llama")
model = AutoModelForCausalLM.from_pretrained("alice/tiny-llama")
tokenizer = AutoTokenizer.from_pretrained("alice/tiny-llama")
remote = AutoModel.from_pretrained("alice/tiny-remote", trust_remote_code=True)
print(json.dumps({
    "hidden": config.hidden_size,
    "checksum": float(sum(p.double().sum() for p in model.parameters())),
    "ids": tokenizer("hello world")["input_ids"],
    "remote": [type(remote).__name__, remote(torch.ones(1, 4)).tolist()],
}))
"""
    result = json.loads(hub_env.run_python(code, tmp_path / "home").strip().splitlines()[-1])
    assert result["hidden"] == 16 and result["checksum"] == pytest.approx(checksum)
    assert result["ids"] == tokenizer("hello world")["input_ids"]
    assert result["remote"] == ["TinyModel", [[1.0, 2.0, 3.0, 4.0]]]


def test_datasets_push_and_load(hub_env, tmp_path):  # noqa: F811
    """Dataset/DatasetDict.push_to_hub, then load_dataset in a fresh process."""
    from datasets import Dataset, DatasetDict
    from huggingface_hub import HfApi

    Dataset.from_dict({"text": ["old"], "label": [9]}).push_to_hub("alice/tiny-ds")
    rows = {"text": ["a", "b", "c"], "label": [0, 1, 0]}
    Dataset.from_dict(rows).push_to_hub("alice/tiny-ds")  # second push: updates files and card
    splits = DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict({"text": ["z"], "label": [1]})})
    splits.push_to_hub("alice/tiny-dd")
    files = HfApi().list_repo_files("alice/tiny-dd", repo_type="dataset")
    assert "README.md" in files and any(f.endswith(".parquet") for f in files)
    assert HfApi().dataset_info("alice/tiny-ds").sha

    code = """
import json
from datasets import load_dataset
train = load_dataset("alice/tiny-ds", split="train")
dd = load_dataset("alice/tiny-dd")
streamed = list(load_dataset("alice/tiny-dd", split="test", streaming=True))  # ranged reads via HfFileSystem
print(json.dumps({"train": train.to_dict(), "splits": {k: v.to_dict() for k, v in dd.items()}, "streamed": streamed}))
"""
    result = json.loads(hub_env.run_python(code, tmp_path / "home").strip().splitlines()[-1])
    assert result["train"] == rows
    assert result["splits"] == {"train": rows, "test": {"text": ["z"], "label": [1]}}
    assert result["streamed"] == [{"text": "z", "label": 1}]


def test_card_validation(hub_env):  # noqa: F811
    """``RepoCard.validate`` passes a card with valid metadata and reports what is wrong with another."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        pipeline_tag="audio-text-to-text",
        library_name="transformers",
        base_model=["openai/whisper-small", "Qwen/Qwen2.5-7B-Instruct"],
        datasets=["alice/speech"],
        tags=["speech"],
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n\n# A model\n").validate()
    ModelCard("# No metadata\n").validate()
    bad = ModelCardData(pipeline_tag="speech-magic", base_model=["not a repo id"], tags=[3], library_name=["x"])
    with pytest.raises(ValueError) as err:
        ModelCard(f"---\n{bad.to_yaml()}\n---\n\n# A model\n").validate()
    for reason in ('"pipeline_tag" must be one of', '"base_model" must hold Hub repository ids', '"tags" must be a'):
        assert reason in str(err.value)
    assert '"library_name" must be a string' in str(err.value)


def test_command_line_server():
    """``python tests/helpers/hub_server.py --port N`` serves until terminated."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, hub_server.__file__, "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == f"Local Hub serving at http://127.0.0.1:{port}"
        deadline = time.time() + 10
        while True:
            try:
                status, _, body = _request(f"http://127.0.0.1:{port}/api/whoami-v2")
                break
            except urllib.error.URLError:
                assert time.time() < deadline
                time.sleep(0.05)
        assert status == 200 and json.loads(body)["name"] == "user"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
