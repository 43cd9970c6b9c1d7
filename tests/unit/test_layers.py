"""The shared post-norm layers: PyTorch's own encoder layer under each kind of mask the models pass, with
either attention path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from czb_core.models.layers import PostNormStack

D, HEADS, HID, LAYERS = 16, 4, 24, 2


def stacks(attention: str):
    """Ours and PyTorch's, seq-first as the authors ran it (batch-first in eval mode takes PyTorch's fused
    fast path, which reads a float mask as a boolean one)."""
    torch.manual_seed(0)
    ours = PostNormStack(D, HEADS, HID, LAYERS, attention).eval()
    reference = nn.TransformerEncoder(nn.TransformerEncoderLayer(D, HEADS, HID, dropout=0.0),
                                      LAYERS, enable_nested_tensor=False).eval()
    ours.load_state_dict(reference.state_dict())  # the same parameter names: a checkpoint loads as it is
    return ours, reference


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_boolean_mask_leaves_padded_keys_out(attention):
    ours, reference = stacks(attention)
    x_bld = torch.randn(3, 7, D)
    attend_bl = torch.arange(7)[None] < torch.tensor([7, 5, 2])[:, None]
    with torch.no_grad():
        got = ours(x_bld, attend_bl[:, None, None, :])
        want = reference(x_bld.transpose(0, 1), src_key_padding_mask=~attend_bl).transpose(0, 1)
    torch.testing.assert_close(got[attend_bl], want[attend_bl], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_float_mask_is_added_to_the_logits(attention):
    ours, reference = stacks(attention)
    x_bld = torch.randn(2, 6, D)
    bias_bl = torch.tensor([[0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.float32)
    with torch.no_grad():
        got = ours(x_bld, bias_bl[:, None, None, :])
        want = reference(x_bld.transpose(0, 1), src_key_padding_mask=bias_bl).transpose(0, 1)  # added to logits
        unmasked = ours(x_bld)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], unmasked[1], atol=1e-6, rtol=1e-6)
    assert (got[0] - unmasked[0]).abs().max() > 1e-4  # +1 on two keys moves the first sequence
