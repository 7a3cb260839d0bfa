"""Sparse affinity graphs as normalised operators, with row minibatches for stochastic spectral losses.

A graph is held as its symmetric normalised operator ``S = D^-1/2 A D^-1/2`` (CSR) of a symmetric
affinity ``A`` with degrees ``D``. ``S`` is similar to the random walk ``P = D^-1 A``
(``P = D^-1/2 S D^1/2``): same eigenvalues, in [-1, 1], eigenvectors mapped by ``D^-1/2``. The
Rayleigh quotient of ``S`` is therefore bounded by 1, which makes ``|1 - x^T S x|`` of the spectral
loss a proper objective, maximised by the leading eigenvectors.

``teleport`` tau > 0 regularises the graph as ``A + (tau / N) 11^T`` (degrees ``d + tau``), a rank-one
term applied implicitly: it keeps a graph of several components from letting a free table reach
the optimum with component indicators.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class _SparseMatmul(torch.autograd.Function):
    """``a @ x`` for sparse ``a`` with the transpose given, so the backward pass needs no sparse transpose."""

    @staticmethod
    def forward(ctx, a: Tensor, a_t: Tensor, x: Tensor) -> Tensor:
        ctx.a_t = a_t
        return a @ x

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, ctx.a_t @ grad


def sparse_matmul(a: Tensor, x: Tensor, a_t: Tensor | None = None) -> Tensor:
    """Differentiable (in ``x``) product of a sparse CSR matrix and a dense one; ``a_t`` defaults to ``a``
    (symmetric)."""
    return _SparseMatmul.apply(a, a if a_t is None else a_t, x)


ROW_CHUNK = 1 << 18
"""Rows of a graph filled and symmetrised at a time (262,144: a graph of up to this many nodes is one chunk)."""


def index_dtype(num_nodes: int) -> torch.dtype:
    """Column indices of operators are stored as int32 when the node count allows (half the memory of int64)."""
    return torch.int32 if num_nodes < 2**31 else torch.long


def indptr_from_counts(counts: Tensor) -> Tensor:
    """The CSR row pointer ``[0, c0, c0 + c1, ...]`` of per-row entry counts."""
    indptr = torch.zeros(counts.numel() + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, 0, out=indptr[1:])
    return indptr


def _row_ids(start: int, counts: Tensor, dtype: torch.dtype) -> Tensor:
    """The row of every entry of rows ``start, start + 1, ...`` holding ``counts`` entries each."""
    return torch.repeat_interleave(
        torch.arange(start, start + counts.numel(), dtype=dtype, device=counts.device), counts
    )


@dataclass
class RowBlock:
    """Rows of a sparse operator for a batch of ``nodes``: ``block`` is ``[len(nodes), len(neighbors)]`` (CSR, with
    its transpose)."""

    nodes: Tensor
    neighbors: Tensor
    block: Tensor
    block_t: Tensor

    @classmethod
    def from_coo(cls, nodes: Tensor, neighbors: Tensor, rows: Tensor, cols: Tensor, values: Tensor) -> RowBlock:
        """From entries (local row, local column, value) of the ``len(nodes) x len(neighbors)`` block, sorted by
        row then column and without duplicates (as rows taken from a CSR matrix are): no sorting is needed."""
        shape = (nodes.numel(), neighbors.numel())
        block = torch.sparse_csr_tensor(
            indptr_from_counts(torch.bincount(rows, minlength=shape[0])), cols, values, shape
        )
        order = torch.argsort(cols * shape[0] + rows)
        block_t = torch.sparse_csr_tensor(
            indptr_from_counts(torch.bincount(cols, minlength=shape[1])), rows[order], values[order], shape[::-1]
        )
        return cls(nodes, neighbors, block, block_t)

    def propagate(self, x_neighbors: Tensor) -> Tensor:
        """``(M x)[nodes]`` from ``x`` at the neighbours (differentiable in ``x``)."""
        dtype = x_neighbors.dtype
        return sparse_matmul(self.block.to(dtype), x_neighbors, self.block_t.to(dtype))


@dataclass
class SparseRows:
    """A sparse ``N x N`` operator in CSR form (``indptr``, ``indices``, ``values``) whose rows can be taken in
    batches."""

    indptr: Tensor
    indices: Tensor
    values: Tensor

    @classmethod
    def from_coo(cls, rows: Tensor, cols: Tensor, values: Tensor, num_nodes: int) -> SparseRows:
        csr = (
            torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (num_nodes, num_nodes))
            .coalesce()
            .to_sparse_csr()
        )
        return cls(csr.crow_indices(), csr.col_indices().to(index_dtype(num_nodes)), csr.values())

    @property
    def num_nodes(self) -> int:
        return self.indptr.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def csr(self) -> Tensor:
        return torch.sparse_csr_tensor(
            self.indptr, self.indices.to(self.indptr.dtype), self.values, (self.num_nodes, self.num_nodes)
        )

    def entries(self, nodes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Entries (position in ``nodes``, column, value) of the rows of ``nodes``, sorted by row then column."""
        counts = self.indptr[nodes + 1] - self.indptr[nodes]
        total = int(counts.sum())
        local_row = torch.repeat_interleave(torch.arange(nodes.numel(), device=nodes.device), counts)
        offsets = torch.repeat_interleave(self.indptr[nodes] - torch.cumsum(counts, 0) + counts, counts)
        positions = offsets + torch.arange(total, device=nodes.device)
        return local_row, self.indices[positions].long(), self.values[positions]

    def rows(self, nodes: Tensor) -> RowBlock:
        """The rows of ``nodes`` with their neighbours (the columns they touch)."""
        local_row, cols, values = self.entries(nodes)
        neighbors, local_col = torch.unique(cols, return_inverse=True)
        return RowBlock.from_coo(nodes, neighbors, local_row, local_col, values)

    def tensors(self) -> dict[str, Tensor]:
        return {"indptr": self.indptr, "indices": self.indices, "values": self.values}

    def save(self, path: str | Path, **metadata: str) -> None:
        from safetensors.torch import save_file

        from ..files import atomic_path

        with atomic_path(path) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in self.tensors().items()}, str(tmp), metadata=metadata or None)

    @staticmethod
    def _load(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
        from ..files import map_safetensors

        return map_safetensors(path)

    @classmethod
    def load(cls, path: str | Path) -> SparseRows:
        tensors, _ = cls._load(path)
        return cls(tensors["indptr"], tensors["indices"], tensors["values"])


@dataclass
class SparseGraph(SparseRows):
    """``S`` in CSR form over ``num_nodes`` nodes, plus the degrees of ``A`` and the teleport term."""

    degree: Tensor = None
    teleport: float = 0.0

    @classmethod
    def from_affinity(
        cls, rows: Tensor, cols: Tensor, weights: Tensor, num_nodes: int, teleport: float = 0.0
    ) -> SparseGraph:
        """Symmetrise ``A = (W + W^T) / 2`` from directed weighted edges (repeated edges add up) and normalise it."""
        directed = SparseRows.from_coo(rows, cols, weights.float(), num_nodes)
        return cls.from_directed(directed.indptr, directed.indices, directed.values, teleport)

    @classmethod
    def from_directed(
        cls, indptr: Tensor, indices: Tensor, values: Tensor, teleport: float = 0.0, chunk_rows: int = ROW_CHUNK
    ) -> SparseGraph:
        """Symmetrise and normalise the directed graph ``W`` given in CSR form (rows sorted, no repeated entry)."""
        num_nodes = indptr.numel() - 1
        pieces = []
        for r0 in range(0, num_nodes, chunk_rows):
            r1 = min(r0 + chunk_rows, num_nodes)
            lo, hi = int(indptr[r0]), int(indptr[r1])
            pieces.append((indptr[r0 : r1 + 1].diff(), indices[lo:hi], values[lo:hi]))
        return cls.from_row_chunks(pieces, num_nodes, chunk_rows, teleport)

    @classmethod
    def from_row_chunks(
        cls, pieces: list[tuple[Tensor, Tensor, Tensor]], num_nodes: int, chunk_rows: int, teleport: float = 0.0
    ) -> SparseGraph:
        """Symmetrise and normalise a directed graph ``W`` given as consecutive chunks of ``chunk_rows`` rows, each
        ``(entries per row, columns, values)`` with rows sorted by column; the list is emptied as it is used.

        ``W^T`` is formed by one pass that files every entry under the chunk of its column; then each
        chunk of ``A = (W + W^T) / 2`` is summed from its rows of ``W`` and its entries of ``W^T``, which
        are freed as it goes. Memory peaks near three times ``W``'s (W, its filed transpose, or the
        result while it is joined), never the whole edge list as 64-bit pairs or a global sort.
        """
        chunks = len(pieces)
        if chunks != -(-num_nodes // chunk_rows) or sum(p[0].numel() for p in pieces) != num_nodes:
            raise ValueError(f"{chunks} row chunks do not cover {num_nodes} nodes in chunks of {chunk_rows} rows")
        transposed: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in pieces]
        for p, (counts, cols, vals) in enumerate(pieces):
            rows = _row_ids(p * chunk_rows, counts, cols.dtype)
            bucket = torch.div(cols, chunk_rows, rounding_mode="floor").long()
            order = torch.argsort(bucket, stable=True)
            for q, part in enumerate(torch.split(order, torch.bincount(bucket, minlength=chunks).tolist())):
                if part.numel():
                    transposed[q].append((cols[part], rows[part], vals[part]))
        out_counts, out_indices, out_values = [], [], []
        degree = torch.zeros(num_nodes)
        for p in range(chunks):
            counts, cols, vals = pieces[p]
            r0, size = p * chunk_rows, counts.numel()
            rows = torch.cat([_row_ids(r0, counts, cols.dtype)] + [t[0] for t in transposed[p]]).long()
            cols = torch.cat([cols] + [t[1] for t in transposed[p]]).long()
            vals = torch.cat([vals] + [t[2] for t in transposed[p]])
            pieces[p], transposed[p] = None, []  # this chunk of W and W^T is no longer needed
            key, inverse = torch.unique((rows - r0) * num_nodes + cols, return_inverse=True)  # sorted by row, column
            del rows, cols
            summed = torch.zeros(key.numel()).index_add_(0, inverse, vals) * 0.5
            local = torch.div(key, num_nodes, rounding_mode="floor")
            out_counts.append(torch.bincount(local, minlength=size))
            out_indices.append((key % num_nodes).to(index_dtype(num_nodes)))
            out_values.append(summed)
            degree[r0 : r0 + size] = torch.zeros(size).index_add_(0, local, summed)
        pieces.clear()
        inv_sqrt = (degree + teleport).clamp_min(1e-12).rsqrt()
        for p, counts in enumerate(out_counts):  # S = D^-1/2 A D^-1/2, chunk by chunk
            rows = _row_ids(p * chunk_rows, counts, torch.long)
            out_values[p] = out_values[p] * inv_sqrt[rows] * inv_sqrt[out_indices[p].long()]
        return cls(
            indptr_from_counts(torch.cat(out_counts)), torch.cat(out_indices), torch.cat(out_values), degree, teleport
        )

    # --- operators -------------------------------------------------------------------------------
    def _teleport_vector(self) -> Tensor:
        return (self.degree + self.teleport).clamp_min(1e-12).rsqrt()

    def matmul(self, x: Tensor) -> Tensor:
        """``S @ x`` for ``x`` of shape ``[N, m]`` (differentiable in ``x``)."""
        out = sparse_matmul(self.csr().to(x.dtype), x)  # S is symmetric: its own transpose
        if self.teleport:
            u = self._teleport_vector().to(x.dtype)
            out = out + (self.teleport / self.num_nodes) * u[:, None] * (u @ x)[None, :]
        return out

    def to_dense(self) -> Tensor:
        dense = self.csr().to_dense()
        if self.teleport:
            u = self._teleport_vector()
            dense = dense + (self.teleport / self.num_nodes) * torch.outer(u, u)
        return dense

    def random_walk(self) -> Tensor:
        """The row-stochastic ``P = D^-1 A`` (sparse CSR; teleport not included)."""
        row = _row_ids(0, self.indptr.diff(), torch.long)
        sqrt_d = self.degree.clamp_min(1e-12).sqrt()
        values = self.values * sqrt_d[self.indices.long()] / sqrt_d[row]
        return torch.sparse_csr_tensor(
            self.indptr, self.indices.to(self.indptr.dtype), values, (self.num_nodes, self.num_nodes)
        )

    def rows(self, nodes: Tensor) -> GraphRows:
        """The rows of ``nodes`` with their neighbours, for a stochastic estimate of ``(S x)[nodes]``."""
        block = super().rows(nodes)
        u = self._teleport_vector() if self.teleport else None
        return GraphRows(block.nodes, block.neighbors, block.block, block.block_t, u, self.teleport, self.num_nodes)

    # --- storage ---------------------------------------------------------------------------------
    def tensors(self) -> dict[str, Tensor]:
        return {**super().tensors(), "degree": self.degree}

    def save(self, path: str | Path, **metadata: str) -> None:
        super().save(path, teleport=repr(self.teleport), **metadata)

    @classmethod
    def load(cls, path: str | Path) -> SparseGraph:
        tensors, metadata = cls._load(path)
        return cls(
            tensors["indptr"], tensors["indices"], tensors["values"], tensors["degree"], float(metadata["teleport"])
        )

    def to(self, device: torch.device | str) -> SparseGraph:
        return SparseGraph(
            self.indptr.to(device),
            self.indices.to(device),
            self.values.to(device),
            self.degree.to(device),
            self.teleport,
        )


@dataclass
class GraphRows(RowBlock):
    """Rows of a graph ``S`` for a batch of nodes, with the teleport term's estimate."""

    teleport_vector: Tensor | None = None
    teleport: float = 0.0
    num_nodes: int = 0

    def propagate(self, x_neighbors: Tensor, x_nodes: Tensor | None = None) -> Tensor:
        """``(S x)[nodes]`` from ``x`` at the neighbours (and at the nodes, for the teleport term's estimate)."""
        out = super().propagate(x_neighbors)
        if self.teleport:
            u = self.teleport_vector[self.nodes].to(x_nodes.dtype)
            global_sum = (u @ x_nodes) * (self.num_nodes / self.nodes.numel())  # unbiased estimate of u^T x
            out = out + (self.teleport / self.num_nodes) * u[:, None] * global_sum[None, :]
        return out


def pooling_matrix(fine: tuple[int, int], coarse: tuple[int, int], images: int = 1) -> Tensor:
    """Sparse ``[images*h_c*w_c, images*h_f*w_f]`` average pooling with orthonormal rows (entries ``1/sqrt(r)``).

    A fine cell belongs to the coarse cell containing its centre. Orthonormal rows make
    ``G^T S G`` keep ``S``'s eigenvalues for vectors constant on coarse cells.
    """
    (hf, wf), (hc, wc) = fine, coarse
    if hc > hf or wc > wf:
        raise ValueError(f"coarse grid {coarse} is finer than the fine grid {fine}")
    ys = ((torch.arange(hf) + 0.5) * hc / hf).long()
    xs = ((torch.arange(wf) + 0.5) * wc / wf).long()
    cell = (ys[:, None] * wc + xs[None, :]).flatten()
    count = torch.bincount(cell, minlength=hc * wc).float()
    if (count == 0).any():
        raise ValueError(f"grid {coarse} has cells that receive no cell of {fine}")
    offsets_f = torch.arange(images)[:, None] * (hf * wf)
    offsets_c = torch.arange(images)[:, None] * (hc * wc)
    rows = (cell[None, :] + offsets_c).flatten()
    cols = (torch.arange(hf * wf)[None, :] + offsets_f).flatten()
    vals = count[cell].rsqrt().repeat(images)
    return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (images * hc * wc, images * hf * wf)).coalesce()


def lift_graph(graph: SparseGraph, pooling: Tensor) -> SparseGraph:
    """``G^T S G``: a graph on a coarse grid as an operator on the fine grid (``pooling`` from
    :func:`pooling_matrix`)."""
    if graph.teleport:
        raise ValueError("lift the graph before adding a teleport term")
    s = graph.csr().to_sparse_coo()
    lifted = torch.sparse.mm(torch.sparse.mm(pooling.t().coalesce(), s), pooling).coalesce().to_sparse_csr()
    # each coarse degree spread evenly over its cell, so that sqrt(degree) stays the leading eigenvector
    sqrt_degree = torch.sparse.mm(pooling.t().coalesce(), graph.degree.sqrt()[:, None]).squeeze(1)
    return SparseGraph(lifted.crow_indices(), lifted.col_indices(), lifted.values(), sqrt_degree.square())
