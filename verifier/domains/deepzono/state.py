"""The DeepZono state: a zonotope with a per-neuron rounding-error box.

Its generator matrix is sparse (CSR) from the input through convolutions and pools, where each
neuron depends on few generators, and dense through fully connected layers (dropping every
generator no neuron uses; held generator-major, so `dense` is the n x m transposed view of a
row-major m x n array). The transfers that make and change zonotopes: deepzono.transfers.

Generator identity on graphs: a zonotope's `blocks` name the runs of its generator ids, each
(tag, end) with a tag drawn once from `BLOCK_TAGS` where those generators were made (an input
box, a ReLU or pool's new generators, a renumbering). Ids keep their meaning through every
transfer that keeps the numbering, so two branches from one fork hold the same tagged blocks
for what they share; a join (Add, Concat) lays the operands' blocks out in one numbering, a
tag both hold once, and adds or stacks the generators there. A block present in one operand
only is private to it; an untagged run of ids counts as private (sound, only looser).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from verifier.box import InputBox
from verifier.domains.deepzono import join_kernels as J
from verifier.domains.deepzono import kernels as K
from verifier.numerics.memory import csr_bytes, dense_bytes

BLOCK_TAGS = itertools.count()  # generator block tags, unique per process
Blocks = tuple[tuple[int, int], ...]


@dataclass
class Zonotope:
    """Centre c, generators (CSR rows or a dense matrix), error box beta; m generator ids.

    gsum, when the kernel that made a CSR zonotope knew it: an upper bound of the exact sum
    of |generators| of every row, so bounds need not sweep the rows again.
    blocks: the runs of generator ids as (tag, end id), in order from id 0 (module docstring).
    """

    c: np.ndarray
    beta: np.ndarray
    m: int
    dense: np.ndarray | None = None
    indptr: np.ndarray | None = None
    idx: np.ndarray | None = None
    val: np.ndarray | None = None
    gsum: np.ndarray | None = None
    blocks: Blocks = ()
    compact_tag: int | None = field(default=None, repr=False)

    @classmethod
    def from_box(cls, box: InputBox) -> Zonotope:
        """One generator per input with non-zero width."""
        c, ptr, idx, val = K.box_to_csr(box.lower, box.upper)
        m = c.shape[0]
        return cls(c=c, beta=np.zeros(m), m=m, indptr=ptr, idx=idx, val=val,
                   blocks=((next(BLOCK_TAGS), m),))

    @classmethod
    def of_dense(cls, c: np.ndarray, gt: np.ndarray, beta: np.ndarray,
                 blocks: Blocks = ()) -> Zonotope:
        """A dense zonotope from its generator-major matrix gt (m x n)."""
        return cls(c, beta, gt.shape[0], dense=gt.T, blocks=blocks)

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    @property
    def nbytes(self) -> int:
        """The memory the state holds (what verifier.numerics.memory's cap counts)."""
        n = self.c.shape[0]
        if self.is_dense:
            return dense_bytes(n, self.dense.shape[1])
        return csr_bytes(n, self.indptr[-1])

    @property
    def gt(self) -> np.ndarray:
        """The dense generators, generator-major and row-major (m x n)."""
        return np.ascontiguousarray(self.dense.T)

    def bounds(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sound (lower, upper, radius) per neuron."""
        if self.is_dense:
            return K.dense_bounds(self.c, self.gt, self.beta)
        if self.gsum is not None:
            return K.bounds_from_sums(self.c, self.gsum, self.beta)
        return K.csr_bounds(self.c, self.indptr, self.val, self.beta)

    def row_sums(self) -> np.ndarray:
        """gsum of a CSR zonotope (computed when its kernel did not give it)."""
        if self.gsum is not None:
            return self.gsum
        return K.csr_abs_sums(self.indptr, self.val)

    def grown(self, m: int) -> Blocks:
        """The blocks of a result that keeps these ids and appends new ones up to m."""
        return self.blocks if m == self.m else (*self.blocks, (next(BLOCK_TAGS), m))

    def compacted(self, m: int) -> Blocks:
        """The blocks of a result holding these generators renumbered by first use in idx
        (csr_to_dense_affine's numbering, a function of idx alone): these blocks when that
        keeps every id (an input box), else one block whose tag is the same for every
        renumbering of this zonotope, so branches that both renumber it still share."""
        if m == self.m and J.keeps_ids(self.idx, self.m):
            return self.blocks
        if self.compact_tag is None:
            self.compact_tag = next(BLOCK_TAGS)
        return ((self.compact_tag, m),)

    def to_csr(self) -> Zonotope:
        if not self.is_dense:
            return self
        ptr, idx, val = K.dense_to_csr(np.ascontiguousarray(self.dense))
        return Zonotope(self.c, self.beta, self.dense.shape[1], indptr=ptr, idx=idx, val=val,
                        blocks=self.blocks)

    def to_dense(self) -> Zonotope:
        if self.is_dense:
            return self
        n = self.c.shape[0]
        eye = np.eye(n)
        _, gt, _ = K.csr_to_dense_affine(
            self.c, self.indptr, self.idx, self.val, self.beta, np.zeros(n), self.m,
            eye, eye, np.zeros(n),
        )  # the identity layer: every product is exact, so c and beta carry over
        return Zonotope.of_dense(self.c.copy(), gt, self.beta.copy(), self.compacted(len(gt)))
