"""The chunked LM-head loss: its fused gradients (computed in the forward pass) are autograd's through
full logits, with or without ignored targets (-100), whatever the chunk size."""

import pytest
import torch
import torch.nn.functional as F

from longctx.models.loss import chunked_nll


@pytest.mark.parametrize("ignored", [0, 5])
@pytest.mark.parametrize("chunk_size", [7, 64])
def test_fused_gradients_are_autograds_through_full_logits(ignored, chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False, dtype=torch.float64)
    targets = torch.randint(0, 50, (40,))
    targets[torch.randperm(40)[:ignored]] = -100

    total, count = chunked_nll(hidden, head, targets, chunk_size)
    total.backward()
    fused = (total.detach(), hidden.grad.clone(), head.weight.grad.clone())

    hidden.grad, head.weight.grad = None, None
    reference = F.cross_entropy(head(hidden), targets, ignore_index=-100, reduction="sum")
    reference.backward()
    assert count == 40 - ignored
    torch.testing.assert_close(fused[0], reference.detach().float())
    torch.testing.assert_close(fused[1], hidden.grad)
    torch.testing.assert_close(fused[2], head.weight.grad, rtol=1e-5, atol=1e-6)  # accumulated in float32
    if ignored:  # an ignored position gets no gradient
        assert hidden.grad[targets == -100].abs().max() == 0 and fused[1][targets == -100].abs().max() == 0
