"""Region filters in factored form: a static filter plus per-sample combinations of parameters.

Both of DRConv2d's filter generators give each sample's region filters this way, so the CPU
kernels form them where they pack them (:func:`drconv.region_conv_factored`) instead of
holding B * m filters in memory.
"""
from typing import NamedTuple, Optional

from torch import Tensor


class Factors(NamedTuple):
    """Region filters in factored form:

    ``filter[b, r][o, i, t] = weight[o, i, t] + bias[r, o, i]
    + sum_c coef[b, r, c, t] * terms[r, c, o, t, i]``

    for output channel o, input channel i and tap t of the kh x kw kernel; a size-1 dim is
    shared: terms by the regions, coef by the taps.

    Attributes:
        weight (Tensor[C_out, C_in, kh, kw]): the static filter.
        bias (Tensor[m, C_out, C_in] or None): each region's offset, shared by the taps.
        terms (Tensor[m or 1, n, C_out, kh, kw, C_in] or, shared by the taps,
            Tensor[m or 1, n, C_out, C_in]): the parameter tensors combined.
        coef (Tensor[B, m, n, kh * kw or 1]): each sample's and region's coefficients.
    """

    weight: Tensor
    bias: Optional[Tensor]
    terms: Tensor
    coef: Tensor

    def materialize(self) -> Tensor:
        """The filters themselves, (B, m, C_out, C_in, kh, kw), with autograd (B * m filters
        in memory: the reference, and the path where the CPU kernels do not run)."""
        c_out, c_in, kh, kw = self.weight.shape
        b, m, n, coef_taps = self.coef.shape
        terms = self.terms.reshape(self.terms.shape[0], n, c_out, -1, c_in)  # (., n, O, t, I)
        coef = self.coef.view(b, m, n, 1, coef_taps, 1)
        delta = (coef * terms.unsqueeze(0)).sum(2)  # (B, m, O, t, I)
        if self.bias is not None:
            delta = delta + self.bias.view(1, m, c_out, 1, c_in)
        delta = delta.expand(b, m, c_out, kh * kw, c_in).reshape(b, m, c_out, kh, kw, c_in)
        return self.weight.unsqueeze(0).unsqueeze(0) + delta.permute(0, 1, 2, 5, 3, 4)
