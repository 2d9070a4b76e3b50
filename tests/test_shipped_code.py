"""The code files saved with a shipped checkpoint are the top-level Hub files: a change to one reaches the demo."""

import json
import os

from world import build_demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def test_demo_checkpoint_ships_the_top_level_code_files():
    shipped = sorted(name for name in os.listdir(build_demo.DEMO_DIR) if name.endswith(".py"))
    assert shipped == sorted(build_demo.HUB_CODE_FILES)
    stale = [
        name for name in shipped if read(os.path.join(build_demo.DEMO_DIR, name)) != read(os.path.join(ROOT, name))
    ]
    assert not stale, f"{stale} differ from the top-level files: run `python -m world.build_demo --refresh_code`."


def test_refresh_code_copies_the_files_and_records_them(tmp_path, monkeypatch):
    demo_dir = tmp_path / "blsp"
    demo_dir.mkdir()
    for name in build_demo.HUB_CODE_FILES:
        (demo_dir / name).write_text("# an older copy\n")
    manifest = tmp_path / "demo_manifest.json"
    manifest.write_text('{"files": {}, "layout": "speech_first"}')
    monkeypatch.setattr(build_demo, "DEMO_DIR", str(demo_dir))
    build_demo.refresh_code(str(manifest))
    for name in build_demo.HUB_CODE_FILES:
        assert read(demo_dir / name) == read(os.path.join(ROOT, name))
    recorded = json.loads(manifest.read_text())
    assert recorded["layout"] == "speech_first"
    assert recorded["files"] == build_demo.build_world.file_records(str(demo_dir))


def test_english_adapter_ships_the_top_level_code_files():
    directory = os.path.join(ROOT, "english", "models", "blsp-whisper-tiny.en-smollm2-135m")
    shipped = sorted(name for name in os.listdir(directory) if name.endswith(".py"))
    assert shipped == sorted(build_demo.HUB_CODE_FILES)
    stale = [name for name in shipped if read(os.path.join(directory, name)) != read(os.path.join(ROOT, name))]
    assert not stale, f"{stale} differ from the top-level files: copy them into {directory}."
