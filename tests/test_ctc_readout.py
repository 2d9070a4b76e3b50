"""The CTC warm-up's loss on the target columns only (`blsp_steps.objectives.target_log_probs`, `ctc_loss_of_columns`)
equals torch's CTC over the whole vocabulary's log-softmax, in value and gradient, repeats and unfittable rows
included."""

import pytest
import torch
from torch import nn

from adapter_blsp import ctc_readout
from blsp_steps.objectives import ctc_loss_of_columns, target_log_probs
from configuration_blsp import IGNORE_INDEX


@pytest.mark.parametrize("seed", [0, 1])
def test_target_columns_give_the_full_vocabulary_loss_and_gradient(seed):
    torch.manual_seed(seed)
    rows, frames, hidden, vocabulary = 4, 30, 16, 500
    speech = torch.randn(rows, frames, hidden, requires_grad=True)
    embeddings = torch.randn(vocabulary, hidden)
    labels = torch.tensor([[5, 5, 7, 9, -100], [3, 4, 3, 4, 3], [8, -100, -100, -100, -100], [1, 2, 2, 2, 499]])
    lengths = torch.tensor([30, 20, 10, 3])  # the last row's 5 targets (3 repeats) cannot fit 3 frames
    target_lengths = (labels != IGNORE_INDEX).sum(-1)

    full = nn.functional.log_softmax(ctc_readout(speech, embeddings), dim=-1).transpose(0, 1)
    targets = torch.where(labels != IGNORE_INDEX, labels + 1, 0)
    expected = nn.functional.ctc_loss(full, targets, lengths, target_lengths, zero_infinity=True)
    (expected_gradient,) = torch.autograd.grad(expected, speech)

    log_probs, column_targets = target_log_probs(speech, embeddings, labels)
    assert log_probs.shape == (rows, frames, 1 + 3)  # the blank and at most 3 distinct tokens a row
    loss = ctc_loss_of_columns(log_probs, column_targets, lengths, target_lengths)
    (gradient,) = torch.autograd.grad(loss, speech)

    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-4, atol=1e-4)
    assert not gradient[3].any()
