"""One vocabulary across the step scripts: shared flag names with the old ones as aliases; the recipe files parse."""

import os

import pytest
import yaml

import evaluate_blsp
import generate_continuations
import train_adapter
from blsp_steps.arguments import DTYPES, parse_script_arguments
from blsp_steps.corpora import CorpusArguments
from world import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEP1 = ["--dataset_name", "corpus", "--llm_name_or_path", "llm", "--output_dir", "out"]
STEP2 = ["--speech_encoder_name_or_path", "w", "--llm_name_or_path", "l", "--dataset_name", "c"]


@pytest.mark.parametrize(
    "flags",
    [
        ["--split", "dev", "--max_samples", "7", "--length_grouping_rows", "32"],
        ["--dataset_split", "dev", "--max_train_samples", "7", "--length_grouping_rows", "32"],
    ],
)
def test_step_flags_have_one_name_in_both_steps(flags, tmp_path):
    corpus_args, args = generate_continuations.parse_arguments([*STEP1, *flags])
    assert (corpus_args.split, corpus_args.max_samples, args.length_grouping_rows) == ("dev", 7, 32)
    _, data_args, _, _ = train_adapter.parse_arguments([*STEP2, "--output_dir", str(tmp_path), *flags])
    assert (data_args.split, data_args.max_samples, data_args.length_grouping_rows) == ("dev", 7, 32)
    evaluation_flags = ["--dataset_name", "d", "--model_name_or_path", "m", "--output_dir", "o", *flags[:4]]
    corpus_args, _ = parse_script_arguments((CorpusArguments, evaluate_blsp.EvaluationArguments), evaluation_flags)
    assert (corpus_args.split, corpus_args.max_samples) == ("dev", 7)


def test_recipe_files_parse_with_their_scripts():
    corpus_args, args = generate_continuations.parse_arguments([os.path.join(ROOT, "configs", "continuations.yaml")])
    assert corpus_args.split == "train.100" and args.max_new_tokens == 64
    step1 = run.read_recipe(run.STEP1_RECIPE)
    corpus_args, args = generate_continuations.parse_arguments(run.as_flags({**step1, "output_dir": "out"}))
    assert os.path.isdir(corpus_args.dataset_name) and os.path.isdir(args.llm_name_or_path)
    step2 = run.read_recipe(run.STEP2_RECIPE)
    model_args, _, training_args, _ = train_adapter.parse_arguments(run.as_flags({**step2, "dataset_name": "c"}))
    assert os.path.isdir(model_args.speech_encoder_name_or_path)
    assert (training_args.max_steps, training_args.learning_rate) == (3000, 1e-3)
    assert run.TRAINING == {"max_steps": 3000, "batch_size": 16, "learning_rate": 1e-3}


def test_the_step2_example_recipe_parses():
    with open(os.path.join(ROOT, "configs", "train_adapter.yaml"), encoding="utf-8") as file:
        settings = yaml.safe_load(file)
    assert settings.pop("bf16") is True  # parsed on GPUs only
    model_args, data_args, training_args, _ = train_adapter.parse_arguments(run.as_flags(settings))
    assert model_args.llm_name_or_path == "Qwen/Qwen2.5-7B-Instruct" and data_args.dataset_name == [
        "outputs/continuations-librispeech-clean-100"
    ]
    assert (training_args.loss, training_args.learning_rate, training_args.warmup_steps) == ("ce", 5e-5, 1000)


@pytest.mark.parametrize(
    "dataclass_types",
    [
        (CorpusArguments, evaluate_blsp.EvaluationArguments),
        generate_continuations.parse_arguments.__annotations__["return"].__args__,
        (train_adapter.ModelArguments, train_adapter.DataArguments, train_adapter.BlspTrainingArguments),
    ],
    ids=["evaluate_blsp", "generate_continuations", "train_adapter"],
)
def test_every_script_prints_its_help(dataclass_types, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_script_arguments(tuple(dataclass_types), ["--help"])
    assert exit_info.value.code == 0
    assert "--output_dir" in capsys.readouterr().out


SCRIPT_FLAGS = {
    "generate_continuations": lambda extra: generate_continuations.parse_arguments([*STEP1, *extra])[1],
    "train_adapter": lambda extra: train_adapter.parse_arguments([*STEP2, "--output_dir", "o", *extra])[0],
    "evaluate_blsp": lambda extra: parse_script_arguments(
        (CorpusArguments, evaluate_blsp.EvaluationArguments),
        ["--dataset_name", "d", "--model_name_or_path", "m", "--output_dir", "o", *extra],
    )[1],
}


@pytest.mark.parametrize("script", SCRIPT_FLAGS)
def test_one_dtype_convention_in_the_three_scripts(script, capsys):
    parse = SCRIPT_FLAGS[script]
    assert parse([]).dtype == "auto"  # each checkpoint's own dtype, as transformers' `dtype="auto"`
    assert [parse(["--dtype", name]).dtype for name in DTYPES] == DTYPES
    with pytest.raises(SystemExit):
        parse(["--dtype", "bf16"])
    error = capsys.readouterr().err
    assert "argument --dtype: invalid choice: 'bf16'" in error and all(name in error for name in DTYPES)
