"""train_adapter.py end to end: tiny local models, real speech clips, short runs."""

import json
import os
import subprocess
from types import SimpleNamespace

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import train_adapter
from blsp_steps.corpora import CONTINUATIONS_METADATA_FILE
from blsp_steps.objectives import OBJECTIVES, TrainingStep
from blsp_steps.training import SpeechPromptCollator, character_labels
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.launching import two_process_launch
from tests.helpers.steps import (
    INSTRUCTION,
    METADATA,
    continuation_rows,
    logged_losses,
    model_flags,
    run_flags,
    run_settings,
    save_untrained_blsp,
    write_dataset,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")
CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"


@pytest.fixture(scope="module")
def continuation_dataset(speech_corpus, tmp_path_factory) -> str:
    """8 clips with continuations, plus one row whose audio cannot be decoded."""
    return write_dataset(str(tmp_path_factory.mktemp("continuations")), speech_corpus, True, unreadable_rows=1)


@pytest.fixture(scope="module")
def transcript_dataset(speech_corpus, tmp_path_factory) -> str:
    """8 clips with transcripts only: enough for the KL objective."""
    return write_dataset(str(tmp_path_factory.mktemp("transcripts")), speech_corpus, False)


def assert_loss_falls(output_dir: str):
    losses = logged_losses(output_dir)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.95 * first, f"loss did not fall: {losses}"


def saved_weights(directory: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "model.safetensors"))


def weights_under(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}


def assert_bit_identical(trained: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]):
    shared = trained.keys() & reference.keys()
    assert shared
    changed = [key for key in shared if not torch.equal(trained[key], reference[key])]
    assert not changed, f"frozen weights changed: {changed}"


@pytest.fixture(scope="module")
def ce_run(tiny_checkpoints, responsive_llm, continuation_dataset, tmp_path_factory) -> str:
    """The default run: a new model, cross-entropy, adapter only, an eval split, checkpoints."""
    output_dir = str(tmp_path_factory.mktemp("ce_run"))
    train_adapter.main(
        model_flags(tiny_checkpoints, responsive_llm)
        + run_flags(continuation_dataset, output_dir, 30, "--save_strategy", "steps", "--save_steps", "15")
        + ["--eval_split_ratio", "0.2", "--eval_strategy", "steps", "--eval_steps", "15"]
    )
    return output_dir


def test_ce_loss_falls_and_unreadable_row_is_skipped(ce_run):
    assert_loss_falls(ce_run)
    with open(os.path.join(ce_run, "all_results.json")) as file:
        results = json.load(file)
    assert results["skipped_audio_rows"] >= 1
    assert results["eval_loss"] > 0
    with open(os.path.join(ce_run, "audio_rejects-00000.jsonl")) as file:  # the skipped rows, with their reason
        assert {json.loads(line)["reason"] for line in file} == {"unusable_audio"}


def test_only_the_adapter_changes_by_default(ce_run, tiny_checkpoints, responsive_llm):
    trained = saved_weights(ce_run)
    assert_bit_identical(weights_under(trained, "language_model."), saved_weights(responsive_llm))
    whisper = weights_under(saved_weights(tiny_checkpoints["whisper"]), "encoder.")
    assert_bit_identical(weights_under(trained, "speech_encoder."), whisper)

    optimizer = torch.load(os.path.join(ce_run, "checkpoint-30", "optimizer.pt"), weights_only=False)
    adapter_tensors = len(weights_under(trained, "adapter."))
    assert len(optimizer["state"]) == adapter_tensors  # frozen parts hold no optimizer state


def test_trained_model_loads_with_auto_classes_and_pipeline(ce_run, speech_corpus):
    from transformers import AutoModel, AutoProcessor, pipeline

    clip = os.path.join(speech_corpus[0], speech_corpus[1][0]["file_name"])
    model = AutoModel.from_pretrained(ce_run, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(ce_run, trust_remote_code=True)
    assert processor.render_prompt(INSTRUCTION).count(processor.speech_token) == 1
    inputs = processor(text=processor.render_prompt(INSTRUCTION), audio=clip)
    assert model.generate(**inputs, max_new_tokens=4, do_sample=False).shape[1] > inputs["input_ids"].shape[1]
    speech_llm = pipeline(model=ce_run, trust_remote_code=True)
    assert isinstance(speech_llm(clip, instruction=INSTRUCTION, max_new_tokens=4)["generated_text"], str)

    with open(os.path.join(ce_run, "README.md")) as file:
        card = file.read()
    for section in (
        "## Base models",
        "## Training data",
        "## Objective",
        "## Hyper-parameters",
        "eval loss",
        "```python",
    ):
        assert section in card
    assert "| teacher |" not in card  # cross-entropy has no teacher (KL runs: "live", or "cached (top-K, ...)")


@pytest.mark.parametrize("loss", ["kl", "ce+kl"])
def test_distillation_losses_fall(
    loss, tiny_checkpoints, responsive_llm, transcript_dataset, continuation_dataset, tmp_path
):
    dataset = transcript_dataset if loss == "kl" else continuation_dataset  # KL needs no continuation
    train_adapter.main(
        model_flags(tiny_checkpoints, responsive_llm) + run_flags(dataset, str(tmp_path), 30, "--loss", loss)
    )
    assert_loss_falls(str(tmp_path))
    with open(os.path.join(tmp_path, "README.md")) as file:
        assert "| teacher | live |" in file.read()  # the datasets hold no cached teacher


def test_ctc_warm_up_trains_the_adapter_without_running_the_llm(
    tiny_checkpoints, responsive_llm, transcript_dataset, tmp_path, monkeypatch
):
    def no_llm_forward(*args, **kwargs):
        raise AssertionError("the ctc objective ran the LLM")

    monkeypatch.setattr(BlspForConditionalGeneration, "forward", no_llm_forward)
    train_adapter.main(
        model_flags(tiny_checkpoints, responsive_llm)
        + run_flags(transcript_dataset, str(tmp_path), 30, "--loss", "ctc")
    )
    assert_loss_falls(str(tmp_path))
    card = ModelCard.load(os.path.join(tmp_path, "README.md")).text
    assert "CTC between the adapter's outputs" in card


@pytest.mark.parametrize("term", ["ctc", "chars"])
def test_ctc_term_of_a_padded_batch_is_the_mean_of_each_row_alone(initial_blsp, speech_corpus, term):
    """Padded frames and labels take no part: the batch's loss is the mean of the rows' losses computed alone (the
    LLM's tokens, or the character head's characters)."""
    corpus_dir, rows = speech_corpus
    model = BlspForConditionalGeneration.from_pretrained(initial_blsp, adapter_characters=CHARACTERS).eval()
    processor = BlspProcessor.from_pretrained(initial_blsp)
    labels = {"ctc": {"with_ctc_labels": True}, "chars": {"characters": CHARACTERS}}[term]
    collator = SpeechPromptCollator(processor, with_teacher=False, **labels)
    records = [
        {
            "audio": {"path": os.path.join(corpus_dir, row["file_name"]), "bytes": None},
            "text": row["text"],
            "instruction": INSTRUCTION,
        }
        for row in rows[:3]
    ]
    trainer = SimpleNamespace(args=SimpleNamespace(), accelerator=SimpleNamespace(unwrap_model=lambda model: model))

    def loss(batch_rows: list[dict]) -> torch.Tensor:
        batch = collator(batch_rows)
        batch.pop("num_skipped_rows")
        with torch.no_grad():
            return OBJECTIVES[term].loss(TrainingStep(trainer, model, batch, None))

    key = {"ctc": "ctc_labels", "chars": "character_labels"}[term]
    assert len({int((collator([row])[key] >= 0).sum()) for row in records}) > 1  # rows differ in length
    alone = torch.stack([loss([row]) for row in records])
    torch.testing.assert_close(loss(records), alone.mean(), rtol=1e-5, atol=1e-5)


def test_character_head_trains_beside_ctc_and_loads_back(initial_blsp, transcript_dataset, tmp_path):
    """`--adapter_characters` adds the head to a trained adapter; `--loss ctc+chars` trains it with the adapter, and
    the checkpoint loads back with the trained head (the LLM never runs)."""
    output_dir = str(tmp_path)
    flags = ["--loss", "ctc+chars", "--adapter_characters", CHARACTERS, "--chars_weight", "0.5"]
    train_adapter.main(["--model_name_or_path", initial_blsp] + run_flags(transcript_dataset, output_dir, 30, *flags))
    assert_loss_falls(output_dir)
    trained = weights_under(saved_weights(output_dir), "adapter.character_head.")
    assert trained["weight"].shape[0] == 4 * (len(CHARACTERS) + 1)
    model = BlspForConditionalGeneration.from_pretrained(output_dir)
    assert model.config.adapter_characters == CHARACTERS
    torch.testing.assert_close(model.adapter.character_head.weight, trained["weight"])
    card = ModelCard.load(os.path.join(output_dir, "README.md")).text
    assert "0.5 x CTC to the transcript's characters" in card


def test_chars_objective_needs_a_character_head(initial_blsp, transcript_dataset, tmp_path):
    with pytest.raises(ValueError, match="--adapter_characters"):
        flags = run_flags(transcript_dataset, str(tmp_path), 1, "--loss", "ctc+chars")
        train_adapter.main(["--model_name_or_path", initial_blsp] + flags)


def test_character_labels_lower_case_leave_out_others_and_collapse_spaces():
    assert character_labels("It's  A\tcat, 2!", CHARACTERS) == [10, 21, 28, 20, 1, 2, 1, 4, 2, 21]


def test_lora_changes_only_lora_and_adapter(initial_blsp, continuation_dataset, tmp_path):
    output_dir = str(tmp_path)
    train_adapter.main(
        ["--model_name_or_path", initial_blsp, "--lora_r", "4", "--lora_save", "adapter", "--loss", "ce+kl"]
        + run_flags(continuation_dataset, output_dir, 6)
    )
    trained, initial = saved_weights(output_dir), saved_weights(initial_blsp)
    assert trained.keys() == initial.keys()
    for part in ("language_model.", "speech_encoder."):
        assert_bit_identical(weights_under(trained, part), weights_under(initial, part))
    adapter = weights_under(trained, "adapter.")
    assert all(not torch.equal(value, initial["adapter." + key]) for key, value in adapter.items())

    lora_dir = os.path.join(output_dir, train_adapter.LORA_ADAPTER_DIR)
    lora = load_file(os.path.join(lora_dir, "adapter_model.safetensors"))
    assert any("lora_B" in key and value.abs().sum() > 0 for key, value in lora.items())  # lora_B starts at zero
    model = BlspForConditionalGeneration.from_pretrained(output_dir)
    model.language_model.load_adapter(lora_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_resumed_run_matches_uninterrupted_run(initial_blsp, continuation_dataset, tmp_path, monkeypatch):
    def flags(output_dir: str) -> list[str]:
        checkpoints = ["--save_strategy", "steps", "--save_steps", "4", "--per_device_train_batch_size", "4"]
        checkpoints += ["--lr_scheduler_type", "linear", "--warmup_steps", "2"]  # a schedule to resume mid-way
        return ["--model_name_or_path", initial_blsp] + run_flags(continuation_dataset, output_dir, 8, *checkpoints)

    uninterrupted, interrupted = str(tmp_path / "uninterrupted"), str(tmp_path / "interrupted")
    train_adapter.main(flags(uninterrupted))

    training_step = train_adapter.BlspTrainer.training_step

    def crash_after_checkpoint(trainer, *args, **kwargs):
        if trainer.state.global_step == 6:
            raise KeyboardInterrupt("simulated crash")
        return training_step(trainer, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(train_adapter.BlspTrainer, "training_step", crash_after_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            train_adapter.main(flags(interrupted))
    assert not os.path.exists(os.path.join(interrupted, "model.safetensors"))
    train_adapter.main(flags(interrupted) + ["--resume_from_checkpoint", os.path.join(interrupted, "checkpoint-4")])

    expected = weights_under(saved_weights(uninterrupted), "adapter.")
    resumed = weights_under(saved_weights(interrupted), "adapter.")
    assert all(torch.equal(resumed[key], value) for key, value in expected.items())
    # The finished run again: the Trainer would train a step past --max_steps and save it over the run; refused.
    with pytest.raises(ValueError, match="checkpoint-8 is already at step 8 of --max_steps 8"):
        train_adapter.main(flags(interrupted))
    after = weights_under(saved_weights(interrupted), "adapter.")
    assert all(torch.equal(after[key], value) for key, value in resumed.items())


def test_two_process_accelerate_launch(initial_blsp, continuation_dataset, tmp_path):
    """DDP on CPU (two processes, gloo), arguments given as a YAML file."""
    output_dir = str(tmp_path / "ddp")
    settings = {"model_name_or_path": initial_blsp, **run_settings(continuation_dataset, output_dir, 3)}
    settings.update(per_device_train_batch_size=2, use_cpu=True, log_level="info")
    config = tmp_path / "args.yaml"
    config.write_text(yaml.safe_dump(settings))
    launch = two_process_launch()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [*launch, os.path.join(ROOT, "train_adapter.py"), str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Total train batch size (w. parallel, distributed & accumulation) = 4" in result.stdout + result.stderr
    with open(os.path.join(output_dir, "train_results.json")) as file:
        assert file.read()
    assert len(logged_losses(output_dir)) == 3
    assert os.path.exists(os.path.join(output_dir, "model.safetensors"))


def test_hub_dataset_in_and_push_to_hub_then_load_in_fresh_process(
    hub_env,  # noqa: F811
    tiny_checkpoints,
    responsive_llm,
    speech_corpus,
    tmp_path,
    monkeypatch,
):
    """Train on a Hub dataset pushed as generate_continuations.py pushes it, from a local checkpoint of two Hub
    models; push the model; load it elsewhere; its card carries the Hub metadata and passes the Hub's validation."""
    from huggingface_hub import HfApi

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    dataset_id, repo_id = "user/continuations", "user/blsp-tiny"
    bases = {"user/tiny-whisper": tiny_checkpoints["whisper"], "user/tiny-chat-llm": responsive_llm}
    for base_id, folder in bases.items():
        HfApi().create_repo(base_id)
        HfApi().upload_folder(repo_id=base_id, folder_path=folder)
    initial_blsp = save_untrained_blsp(*bases, str(tmp_path / "initial"))
    continuation_rows(speech_corpus, True).push_to_hub(dataset_id)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(METADATA).encode(),
        path_in_repo=CONTINUATIONS_METADATA_FILE,
        repo_id=dataset_id,
        repo_type="dataset",
    )
    train_adapter.main(
        ["--model_name_or_path", initial_blsp]
        + run_flags(dataset_id, str(tmp_path / "out"), 2, "--push_to_hub", "--hub_model_id", repo_id)
    )
    code = f"""
import json
from huggingface_hub import ModelCard, hf_hub_download
from transformers import AutoModel, AutoProcessor
import numpy as np
model = AutoModel.from_pretrained({repo_id!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({repo_id!r}, trust_remote_code=True)
inputs = processor(text=processor.render_prompt("Describe the audio."), audio=np.random.randn(16000).astype("float32"))
generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
print("NEW_TOKENS", generated.shape[1] - inputs["input_ids"].shape[1])
print(open(hf_hub_download({repo_id!r}, "README.md")).read())
card = ModelCard.load({repo_id!r})
card.validate()  # huggingface_hub's card validation (the Hub's checks, served by the local Hub)
print("METADATA", json.dumps(card.data.to_dict()))
"""
    output = hub_env.run_python(code, tmp_path / "consumer_home")
    assert "NEW_TOKENS 3" in output
    metadata = json.loads(output.split("METADATA ", 1)[1].splitlines()[0])
    assert metadata == {
        "pipeline_tag": "audio-text-to-text",
        "library_name": "transformers",
        "base_model": list(bases),  # the bases the local checkpoint was built from
        "datasets": [dataset_id],
        "tags": ["blsp", "speech", "audio-text-to-text"],
    }
    assert "## Objective" in output and "## Usage" in output and f'"{repo_id}"' in output
    assert f"`{INSTRUCTION}`" in output  # read from the Hub dataset's metadata file


def test_dataset_without_needed_columns_is_rejected(initial_blsp, transcript_dataset, tmp_path):
    with pytest.raises(ValueError, match="lacks \\['continuation'\\]"):
        train_adapter.main(["--model_name_or_path", initial_blsp] + run_flags(transcript_dataset, str(tmp_path), 1))


def test_checkpoint_of_another_model_type_is_rejected(tiny_checkpoints, continuation_dataset, tmp_path):
    with pytest.raises(ValueError, match="is a 'qwen2' checkpoint, not a 'blsp' one"):
        train_adapter.main(
            ["--model_name_or_path", tiny_checkpoints["qwen2"]] + run_flags(continuation_dataset, str(tmp_path), 1)
        )


def test_save_adapter_only_names_the_bases_and_loads_on_local_copies(
    tiny_checkpoints, responsive_llm, transcript_dataset, tmp_path
):
    output_dir = str(tmp_path / "adapter_only")
    hub_ids = ["--speech_encoder_hub_id", "openai/whisper-tiny.en", "--llm_hub_id", "org/chat-llm"]
    train_adapter.main(
        model_flags(tiny_checkpoints, responsive_llm)
        + run_flags(transcript_dataset, output_dir, 2, "--loss", "kl", "--save_adapter_only", "true", *hub_ids)
    )
    saved = saved_weights(output_dir)
    assert saved and all(key.startswith("adapter.") for key in saved)
    loaded = BlspForConditionalGeneration.from_pretrained(
        output_dir, speech_model_name_or_path=tiny_checkpoints["whisper"], text_model_name_or_path=responsive_llm
    )
    assert (loaded.config.speech_model_name_or_path, loaded.config.text_model_name_or_path) == (
        tiny_checkpoints["whisper"],
        responsive_llm,
    )
    with open(os.path.join(output_dir, "config.json")) as file:
        assert json.load(file)["text_model_name_or_path"] == "org/chat-llm"
    card = ModelCard.load(os.path.join(output_dir, "README.md")).data  # the bases the trained weights apply to
    assert (card.base_model, card.base_model_relation) == (["openai/whisper-tiny.en", "org/chat-llm"], "adapter")
    assert all(torch.equal(loaded.state_dict()[key], value) for key, value in saved.items())
    assert_bit_identical(weights_under(loaded.state_dict(), "language_model."), saved_weights(responsive_llm))


def test_save_adapter_only_refuses_merged_lora(initial_blsp, continuation_dataset, tmp_path):
    with pytest.raises(ValueError, match="--lora_save adapter"):
        train_adapter.main(
            ["--model_name_or_path", initial_blsp, "--save_adapter_only", "true", "--lora_r", "4"]
            + run_flags(continuation_dataset, str(tmp_path), 1)
        )


def test_audio_padding_trains_with_the_silence_and_saves_it(initial_blsp, transcript_dataset, tmp_path, monkeypatch):
    """`--audio_padding_seconds` sets the processor's padding for training (the batches' clips carry it) and saves it
    with the checkpoint, so inference pads as training did."""
    heard = []
    extract = BlspProcessor.extract_features

    def spy(processor, clips):
        heard.append(processor.audio_padding_seconds)
        return extract(processor, clips)

    monkeypatch.setattr(BlspProcessor, "extract_features", spy)
    flags = run_flags(transcript_dataset, str(tmp_path), 2, "--loss", "ctc", "--audio_padding_seconds", "0.2")
    train_adapter.main(["--model_name_or_path", initial_blsp] + flags)
    assert heard and set(heard) == {0.2}
    assert BlspProcessor.from_pretrained(str(tmp_path)).audio_padding_seconds == 0.2
    assert BlspProcessor.from_pretrained(initial_blsp).audio_padding_seconds == 0.0
