"""english.average: checkpoints of one lineage averaged weight for weight; other models refused."""

import json
import os
import subprocess
import sys

import pytest
import torch

from english.average import SOURCES_FILE, average_state_dicts
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save_shifted(source: str, directory: str, shift: float, **config_changes) -> str:
    """`source` with every adapter weight moved by `shift`, saved in `directory`."""
    model = BlspForConditionalGeneration.from_pretrained(source)
    with torch.no_grad():
        for parameter in model.adapter.parameters():
            parameter.add_(shift)
    for key, value in config_changes.items():
        setattr(model.config, key, value)
    model.save_pretrained(directory)
    BlspProcessor.from_pretrained(source).save_pretrained(directory)
    return directory


def test_the_average_is_the_mean_of_the_adapters_and_loads(saved_blsp, tmp_path):
    source = saved_blsp["qwen2"]
    checkpoints = [save_shifted(source, str(tmp_path / f"c{shift}"), shift) for shift in (0.0, 0.1, 0.5)]
    output = str(tmp_path / "average")
    subprocess.run(
        [sys.executable, "-m", "english.average", "--checkpoints", *checkpoints, "--output_dir", output],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    original = BlspForConditionalGeneration.from_pretrained(source)
    averaged = BlspForConditionalGeneration.from_pretrained(output)
    for (name, before), after in zip(original.adapter.state_dict().items(), averaged.adapter.state_dict().values()):
        torch.testing.assert_close(after, before + 0.2, msg=name)
    for (name, before), after in zip(
        original.language_model.state_dict().items(), averaged.language_model.state_dict().values()
    ):
        assert torch.equal(before, after), name
    with open(os.path.join(output, SOURCES_FILE), encoding="utf-8") as file:
        assert [row["checkpoint"] for row in json.load(file)] == checkpoints
    processor = BlspProcessor.from_pretrained(output)
    assert processor.tokenizer.convert_tokens_to_ids(averaged.config.speech_token) == averaged.config.speech_token_id

    again = subprocess.run(
        [sys.executable, "-m", "english.average", "--checkpoints", *checkpoints, "--output_dir", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert again.returncode != 0 and "already holds a model" in again.stderr


def test_checkpoints_of_other_models_are_refused(saved_blsp, tmp_path):
    source = saved_blsp["qwen2"]
    first = save_shifted(source, str(tmp_path / "a"), 0.0)
    other = save_shifted(source, str(tmp_path / "b"), 0.1, ctc_temperature=0.5)
    with pytest.raises(ValueError, match=r"not the same model .*ctc_temperature"):
        average_state_dicts([first, other])
    with pytest.raises(ValueError, match="has no config.json"):
        average_state_dicts([first, str(tmp_path)])
