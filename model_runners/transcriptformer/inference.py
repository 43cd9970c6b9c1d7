"""A TranscriptFormer checkpoint on a device, and batched cell outputs from tokenized cells.

The state dict is read with `weights_only=True` (memory-mapped, so the gene-id head, which no cell
output needs and which for TF-Metazoa is larger than the rest, is never copied) and must fill every
tensor of the network with the right shape; anything else is refused. The frozen gene table comes
from the state dict, as `load_state_dict` gives it to the authors' model.

The engine (`czb_core.models.inference`) runs the batches: longest cell first (an out-of-memory error
shows on the first batch), each padded to its longest cell plus one position (at most `seq_len`; always
`seq_len` for compiled FlexAttention), under the run's precision, with outputs back in input order. On
CUDA attention is FlexAttention, compiled; on the CPU the eager attention (see `default_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from czb_core.errors import ConfigError, WeightsError
from czb_core.models.inference import autocast_dtype, longest_first, memory_batch_size, run_batches
from czb_core.progress import CancelToken, ProgressCallback, no_progress
from model_runners.transcriptformer.cells import TokenizedCells
from model_runners.transcriptformer.network import NetSpec, TranscriptformerNet

if TYPE_CHECKING:  # files reads czb_core.types, which imports anndata: absent on the GPU suite's python
    from model_runners.transcriptformer.files import Checkpoint

CPU_BATCH_SIZE = 4
MAX_AUTO_BATCH = 64
IGNORED_PREFIXES = ("gene_id_head.",)  # trained for the gene-id loss; no cell output reads it


def net_spec(checkpoint: Checkpoint, vocab_size: int, table_dim: int) -> NetSpec:
    from model_runners.transcriptformer.files import START, UNKNOWN

    s, d = checkpoint.sizes, checkpoint.data
    vocabs = checkpoint.aux_vocabs
    return NetSpec(
        vocab_size=vocab_size, table_dim=table_dim, embed_dim=s.embed_dim, num_heads=s.num_heads,
        num_layers=s.num_layers, model_dim=s.model_dim, activation=s.activation, attn_bias=s.attn_bias,
        fw_bias=s.fw_bias, softcap=s.softcap, seq_len=s.seq_len, log_counts_eps=s.log_counts_eps,
        mu_link_fn=s.mu_link_fn, softplus_approx=d.softplus_approx,
        aux_sizes=tuple((c, len(v)) for c, v in vocabs.items()),
        aux_unknown_ids=tuple(v[UNKNOWN] for v in vocabs.values()),
        start_id=checkpoint.special(START), pad_id=checkpoint.special(d.pad_token), block_len=s.block_len,
    )


def load_network(checkpoint: Checkpoint) -> TranscriptformerNet:
    """The network of `checkpoint`, fp32, eval mode, on the CPU; `WeightsError` when unusable."""
    import torch

    path = checkpoint.weights_path
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # torch raises its own types for truncated zips and refused pickles
        raise WeightsError(f"{path} cannot be loaded ({type(exc).__name__}: {exc}); it may be truncated or "
                           "corrupt: delete its cache entry and download it again") from exc
    if not isinstance(state, dict) or "gene_embeddings.embedding.weight" not in state:
        raise WeightsError(f"{path} is not a TranscriptFormer state dict (no gene_embeddings.embedding.weight)")
    table = state["gene_embeddings.embedding.weight"]
    n_tokens = len(checkpoint.token_ids)
    if table.ndim != 2 or table.shape[0] != n_tokens:
        raise WeightsError(f"{path}: the gene table has {tuple(table.shape)} rows x dims, but the vocabulary "
                           f"(special tokens + {', '.join(checkpoint.data.gene_tables)}) has {n_tokens:,} tokens")
    net = TranscriptformerNet(net_spec(checkpoint, n_tokens, int(table.shape[1])))
    wanted = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    expected = net.state_dict()
    missing = sorted(set(expected) - set(wanted))
    unexpected = sorted(set(wanted) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(wanted) if tuple(expected[k].shape) != tuple(wanted[k].shape))
    if missing or unexpected or misshaped:
        examples = ", ".join((missing + unexpected + misshaped)[:4])
        raise WeightsError(f"{path} does not fit the network its config.json describes ({len(missing)} missing, "
                           f"{len(unexpected)} unexpected, {len(misshaped)} mis-shaped tensors, e.g. {examples})")
    net.load_state_dict({k: v.float() for k, v in wanted.items()})
    return net.eval()


@dataclass
class CellOutputs:
    emb_nd: np.ndarray  # float32 cell embeddings, input order
    nll_n: np.ndarray  # float32 mean zero-truncated Poisson NLL per cell (the authors' `llh`)
    batch_size: int  # the batch size the run ended with (smaller than asked after an out-of-memory retry)


class CellEncoder:
    """A loaded network on one device, with its precision and attention backend."""

    def __init__(self, net: TranscriptformerNet, device: str, precision: str = "auto", attention: str = "auto"):
        import torch

        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.spec = net.spec
        self.autocast_dtype = autocast_dtype(precision, self.device)
        self.attention = default_attention(self.device.type) if attention == "auto" else attention
        if self.attention not in ("flex", "eager"):
            raise ConfigError(f"attention must be auto, flex or eager, got {attention!r}")
        # compiled FlexAttention is specialised to its input shape: one width (the authors' seq_len) means
        # one compilation instead of one per batch; its block mask skips the padding's key blocks
        self.fixed_width = self.attention == "flex" and self.device.type == "cuda"

    def auto_batch_size(self) -> int:
        """`CPU_BATCH_SIZE` on the CPU; on CUDA what `GPU_MEMORY_SHARE` of the free memory holds.

        Rule: one full-length cell costs about `4 * L * (model_dim + 10 * embed_dim)` bytes of live
        activations in a layer (FFN intermediate, q/k/v/o, residual and norm copies, fp32 upper bound)
        plus, for eager attention, `4 * heads * L^2` bytes of scores (FlexAttention never holds them).
        """
        s = self.spec
        length = s.seq_len + len(s.aux_sizes)
        per_cell = 4 * length * (s.model_dim + 10 * s.embed_dim)
        if self.attention == "eager":
            per_cell += 4 * s.num_heads * length**2
        return memory_batch_size(self.device, per_cell, cpu_batch=CPU_BATCH_SIZE, max_batch=MAX_AUTO_BATCH)

    def run(self, cells: TokenizedCells, clip_counts: float, batch_size: Optional[int] = None,
            progress: ProgressCallback = no_progress, cancel: Optional[CancelToken] = None,
            gene_outputs: Optional["GeneOutputs"] = None, step: str = "embed") -> CellOutputs:
        """Embeddings and NLLs of `cells`. With `gene_outputs`, each batch's gene outputs are handed to it
        as they come (a batch's full outputs are cells x width x dims: too big to keep for a dataset)."""
        import torch

        if batch_size is None:
            batch_size = self.auto_batch_size()

        def forward(rows_b: np.ndarray):
            width = self.spec.seq_len
            if not self.fixed_width:
                width = int(min(width, cells.lengths[rows_b].max() + 1))
            tokens_bw, counts_bw = cells.padded(rows_b, width, self.spec.pad_id)
            out = self.net(torch.from_numpy(tokens_bw).to(self.device), torch.from_numpy(counts_bw).to(self.device),
                           torch.from_numpy(cells.aux_na[rows_b]).to(self.device), clip_counts,
                           attention=self.attention, keep_gene_outputs=gene_outputs is not None)
            if gene_outputs is not None:
                gene_outputs.add(rows_b, tokens_bw, out.gene_out_bwd.float().cpu().numpy())
            return out.emb_bd, out.nll_b

        batched = run_batches(forward, [longest_first(cells.lengths)], batch_size, device=self.device,
                              dtype=self.autocast_dtype, progress=progress, cancel=cancel, step=step,
                              empty=[(self.spec.embed_dim,), ()])
        return CellOutputs(*batched.outputs, batched.batch_size)


def default_attention(device_type: str) -> str:
    """FlexAttention (compiled) on CUDA; on the CPU the eager products, which measured faster there
    than uncompiled FlexAttention (see benchmarks/bench_transcriptformer.py)."""
    return "flex" if device_type == "cuda" else "eager"


class GeneOutputs:
    """Collects contextual gene embeddings batch by batch: the output at the position whose target is a
    wanted gene (the authors' `cge` output), for `genes_wanted` mapping token -> gene id."""

    def __init__(self, genes_wanted: dict[int, str], embed_dim: int):
        self.genes_wanted = genes_wanted
        self.embed_dim = embed_dim
        self._tokens = np.fromiter(genes_wanted, dtype=np.int64)
        self._cells: list[np.ndarray] = []
        self._genes: list[str] = []
        self._embs: list[np.ndarray] = []

    def add(self, rows: np.ndarray, tokens_bw: np.ndarray, gene_out_bwd: np.ndarray) -> None:
        b_idx, w_idx = np.nonzero(np.isin(tokens_bw, self._tokens))
        self._cells.append(rows[b_idx])
        self._genes.extend(self.genes_wanted[int(t)] for t in tokens_bw[b_idx, w_idx])
        self._embs.append(gene_out_bwd[b_idx, w_idx].astype(np.float32))

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cell index `cell_k`, gene id `gene_k`, `emb_kd`), ordered by cell then gene id."""
        if not self._cells:
            return np.zeros(0, np.int64), np.zeros(0, dtype=str), np.zeros((0, self.embed_dim), np.float32)
        cell_k = np.concatenate(self._cells)
        gene_k = np.asarray(self._genes, dtype=str)
        order = np.lexsort((gene_k, cell_k))
        return cell_k[order], gene_k[order], np.concatenate(self._embs)[order]


def contextual_gene_embeddings(encoder: CellEncoder, cells: TokenizedCells, genes_wanted: dict[int, str],
                               clip_counts: float, batch_size: Optional[int] = None
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell index, gene id, `emb_kd`) of every wanted gene each cell expresses within its first `seq_len`
    genes (see `GeneOutputs`)."""
    collected = GeneOutputs(genes_wanted, encoder.spec.embed_dim)
    encoder.run(cells, clip_counts, batch_size, gene_outputs=collected, step="contextual gene embeddings")
    return collected.result()
