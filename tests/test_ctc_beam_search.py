"""`ctc_beam_size`: the tokens the LLM reads chosen by a CTC prefix beam search that the LLM itself rescores."""

import itertools
import math

import numpy as np
import pytest
import torch

import english.readout
import modeling_blsp
from adapter_blsp import ctc_prefix_beam_search, pick_hypothesis
from blsp_steps.evaluation import EvaluationArguments, Generator
from configuration_blsp import BlspConfig
from english.readout import read_out, read_out_rescored
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor


def brute_force(log_probs: torch.Tensor) -> dict[tuple, float]:
    """Every prefix's log-probability, summed over all the frame-by-frame paths that collapse to it."""
    totals = {}
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = tuple(c - 1 for i, c in enumerate(path) if c and (i == 0 or path[i - 1] != c))
        p = sum(log_probs[frame, c].item() for frame, c in enumerate(path))
        totals[collapsed] = np.logaddexp(totals.get(collapsed, -math.inf), p)
    return totals


def test_prefix_beam_search_sums_every_path_of_each_prefix():
    """With a beam wide enough for every prefix, each hypothesis's score is the exact sum over its alignments (a
    repeat needs a blank between), best first, its frames increasing and one per token."""
    torch.manual_seed(0)
    log_probs = torch.randn(5, 4).log_softmax(-1)
    exact = brute_force(log_probs)
    hypotheses = ctc_prefix_beam_search(log_probs, beam_size=1000)
    assert len(hypotheses) == len(exact)
    for tokens, frames, score in hypotheses:
        assert score == pytest.approx(exact[tuple(tokens)], abs=1e-5)
        assert len(frames) == len(tokens) and frames == sorted(set(frames))
    scores = [score for _, _, score in hypotheses]
    assert scores == sorted(scores, reverse=True)
    assert tuple(hypotheses[0][0]) == max(exact, key=exact.get)


def test_prefix_beam_search_finds_the_frames_tokens_are_read_at():
    """A clip read as `a a _ a b`: tokens a, a, b entering at frames 0, 3 and 4."""
    peaks = [1, 1, 0, 1, 2]
    log_probs = torch.full((5, 3), -6.0)
    log_probs[range(5), peaks] = 0.0
    tokens, frames, _ = ctc_prefix_beam_search(log_probs.log_softmax(-1), beam_size=4)[0]
    assert (tokens, frames) == ([0, 0, 1], [0, 3, 4])


def test_pick_weighs_ctc_language_model_and_length():
    hypotheses = [([1, 2], [0, 1], -1.0), ([1, 2, 3], [0, 1, 2], -2.0)]
    assert pick_hypothesis(hypotheses, [-9.0, -5.0], lm_weight=0.0, length_bonus=0.0) is hypotheses[0]
    assert pick_hypothesis(hypotheses, [-9.0, -5.0], lm_weight=0.5, length_bonus=0.0) is hypotheses[1]
    assert pick_hypothesis(hypotheses, [-5.0, -5.0], lm_weight=1.0, length_bonus=1.5) is hypotheses[1]


def test_beam_size_needs_ctc_at_temperature_zero():
    with pytest.raises(ValueError, match="ctc_beam_size=4 chooses the tokens the LLM reads"):
        BlspConfig(speech_compression="ctc", ctc_beam_size=4)
    with pytest.raises(ValueError, match="ctc_beam_size must be 1 or more"):
        BlspConfig(ctc_beam_size=0)


@pytest.fixture(scope="module")
def beam_model(saved_blsp):
    model = BlspForConditionalGeneration.from_pretrained(
        saved_blsp["qwen2"], speech_compression="ctc", ctc_temperature=0.0, ctc_beam_size=4, ctc_lm_weight=0.5
    ).eval()
    return model, BlspProcessor.from_pretrained(saved_blsp["qwen2"])


READOUT = modeling_blsp.ctc_readout


def peaked(speech_embeds, embeddings):
    """CTC logits that read a few tokens clearly with blanks between, so that hypotheses differ."""
    logits = READOUT(speech_embeds, embeddings)
    peaks = logits.new_full(logits.shape, -20.0)
    peaks[:, 0] = 0.0
    for frame in range(0, len(logits), 3):
        best = logits[frame, 1:].topk(2).indices + 1
        peaks[frame, best[0]], peaks[frame, best[1]] = 1.0, 0.8
    return peaks


def test_the_llm_reads_the_rescored_tokens_at_their_frames(beam_model, monkeypatch):
    """The model's logits are those of its LLM reading, in place of the speech, the embeddings of the hypothesis that
    the beam search and the LLM's own rescoring pick; the readout decodes the same tokens."""
    model, processor = beam_model
    monkeypatch.setattr(modeling_blsp, "ctc_readout", peaked)
    monkeypatch.setattr(english.readout, "ctc_readout", peaked)
    clip = (0.1 * np.random.default_rng(0).standard_normal(48000)).astype(np.float32)
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=clip)
    with torch.no_grad():
        speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        logits = peaked(speech, model.get_input_embeddings().weight)
        hypotheses = ctc_prefix_beam_search(logits.log_softmax(-1), 4)
        eos = model.language_model.config.eos_token_id
        texts = [torch.tensor([[eos, *tokens, eos]]) for tokens, _, _ in hypotheses]
        language = [
            model.language_model(input_ids=ids).logits[0, :-1].log_softmax(-1).gather(-1, ids[0, 1:, None]).sum().item()
            for ids in texts
        ]
        tokens, _, _ = pick_hypothesis(hypotheses, language, 0.5, 0.0)
        assert len({tuple(h[0]) for h in hypotheses}) == 4 and len(tokens) > 1
        ids = inputs["input_ids"][0]
        positions = (ids == model.config.speech_token_id).nonzero()[:, 0]
        embed = model.get_input_embeddings()
        by_hand = torch.cat([embed(ids[: positions[0]]), embed(torch.tensor(tokens)), embed(ids[positions[-1] + 1 :])])
        expected = model.language_model(inputs_embeds=by_hand[None]).logits[0, -1]
        torch.testing.assert_close(model(**inputs).logits[0, -1], expected, atol=1e-4, rtol=0)
    text = processor.tokenizer.decode(tokens).strip()
    assert read_out(model, processor, [clip]) == [text]
    assert read_out_rescored(model, processor, [clip], [(0.5, 0.0), (0.0, 0.0)]) == [
        [text],
        [processor.tokenizer.decode(hypotheses[0][0]).strip()],
    ]


def test_evaluation_overrides_the_decoding_and_checks_it(beam_model, tmp_path):
    """`--config_overrides` (english.score, english.ship, blsp_steps.evaluation) sets decode-time settings for a run;
    a beam at a temperature above 0 is refused, naming what to set."""
    model, processor = beam_model
    checkpoint = str(tmp_path / "ctc")
    model.config.ctc_beam_size = 1
    try:
        model.save_pretrained(checkpoint)
    finally:
        model.config.ctc_beam_size = 4
    processor.save_pretrained(checkpoint)
    args = EvaluationArguments(
        model_name_or_path=checkpoint,
        output_dir=str(tmp_path / "out"),
        config_overrides="ctc_beam_size=8,ctc_lm_weight=0.25,ctc_length_bonus=1.5",
    )
    config = Generator(args).model.config
    assert (config.ctc_beam_size, config.ctc_lm_weight, config.ctc_length_bonus) == (8, 0.25, 1.5)
    args.config_overrides = "ctc_beam_size=8,ctc_temperature=1.0"
    with pytest.raises(ValueError, match="set ctc_temperature=0 too"):
        Generator(args)
