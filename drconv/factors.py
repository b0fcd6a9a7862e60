"""Region filters in factored form: a static filter plus per-sample combinations of parameters.

Both of DRConv2d's filter generators give each sample's region filters this way, so the CPU
kernels form them where they pack them (:mod:`drconv.region_conv_factored`) instead of holding
B * m filters in memory.
"""
from typing import NamedTuple, Optional, Tuple

from torch import Tensor


class Factors(NamedTuple):
    """Region filters in DRConv2d's factored form, never materialised on the kernel path:

    ``filter[b, r][o, t, i] = weight[o, t, i] + bias[r, o, i]
    + sum_c coef[b, r, c, t] * terms[r, c, o, t, i]``

    (t a tap of the kh x kw kernel, i an input channel; K = kh * kw * C_in ordered (kh, kw,
    C_in)), where a size-1 dim is shared: terms by the regions or the taps, coef by the taps.

    Attributes:
        weight (Tensor[C_out, K]): the static filter.
        bias (Tensor[m, C_out, C_in] or None): each region's offset, shared by the taps.
        terms (Tensor[m or 1, n, C_out, K or C_in]): the parameter tensors combined.
        coef (Tensor[B, m, n, kh * kw or 1]): each sample's and region's coefficients.
    """

    weight: Tensor
    bias: Optional[Tensor]
    terms: Tensor
    coef: Tensor

    def materialize(self, kernel: Tuple[int, int]) -> Tensor:
        """The filters themselves, (B, m, C_out, C_in, kh, kw), with autograd: the reference."""
        c_out, k = self.weight.shape
        b, m, n, coef_taps = self.coef.shape
        taps = kernel[0] * kernel[1]
        c_in = k // taps
        terms = self.terms.reshape(self.terms.shape[0], n, c_out, -1, c_in)  # (., n, O, t, I)
        coef = self.coef.reshape(b, m, n, 1, coef_taps, 1)
        delta = (coef * terms.unsqueeze(0)).sum(2)  # (B, m, O, t, I)
        filters = self.weight.view(1, 1, c_out, taps, c_in) + delta
        if self.bias is not None:
            filters = filters + self.bias.view(1, m, c_out, 1, c_in)
        return filters.reshape(b, m, c_out, *kernel, c_in).permute(0, 1, 2, 5, 3, 4)
