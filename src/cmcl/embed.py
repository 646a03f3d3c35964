"""Turn a task's raw shards into feature shards with the frozen encoders (rule `embed`).

One process, or N under `torchrun`/`accelerate launch` (RANK/WORLD_SIZE set): the split's
samples are cut into batches of `batch_size` in shard order and rank r encodes a contiguous
run of whole batches, so every batch (and so every feature, bit for bit) is the one a single
process would encode. Each rank writes its records to a part folder beside the output; the main
process then re-writes them in rank order as the final shards, so the bytes do not depend on N.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from cmcl.encoders import get_encoder
from cmcl.io import DIGESTS, atomic_dir, read_json, record_digests, save_tensors, write_json
from cmcl.shards import iter_samples, npy_bytes, write_shards
from cmcl.streams import SampleStream

MODEL_DTYPES = ("float32", "float16", "bfloat16")
STORAGE_DTYPES = ("float32", "float16")  # numpy has no bfloat16


def _payload(sample: dict, modality: str) -> tuple[str, bytes]:
    for k, v in sample.items():
        if k.split(".", 1)[0] == modality and "." in k:
            return k, v
    raise ValueError(f"{sample.get('__url__')}: sample '{sample['__key__']}' has no '{modality}' "
                     "entry")


def storage_for(dtype: str, storage_dtype: str | None) -> str:
    """The dtype features are stored in: given, else float16 for a float16 model, else float32."""
    if dtype not in MODEL_DTYPES:
        raise ValueError(f"embed.dtype: '{dtype}' is not one of {list(MODEL_DTYPES)}")
    out = storage_dtype or ("float16" if dtype == "float16" else "float32")
    if out not in STORAGE_DTYPES:
        raise ValueError(f"embed.storage_dtype: '{out}' is not one of {list(STORAGE_DTYPES)} "
                         "(numpy, and so .npy, has no bfloat16)")
    return out


class _Run(SampleStream):
    """Samples [start, stop) of a shard folder in shard order (one rank's batches)."""

    def __init__(self, directory: str | Path, start: int, stop: int) -> None:
        super().__init__(directory, shuffle=False, rank=0, world_size=1)
        self.run = (start, min(stop, self.n))

    def _rank_run(self, r: int) -> tuple[int, int]:
        return self.run


def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's / accelerate launch's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _process_group():
    """Accelerate's process state: joins the launcher's group (gloo on CPU, NCCL on GPUs) and
    pins each rank to its own GPU, so an encoder's "cuda" is that rank's device."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def embed_split(shard_dir: str | Path, out_dir: str | Path, encoders: Mapping[str, str],
                batch_size: int = 256, dtype: str = "float32",
                max_shard_bytes: int | None = None, storage_dtype: str | None = None) -> int:
    """Encode every modality of every sample; write `<modality>.npy` feature shards.

    `dtype` is what the encoders' models compute in (float16/bfloat16 for GPUs; built-in
    encoders ignore it), `storage_dtype` what the features are stored as (see `storage_for`).
    Raw samples are streamed in batches of `batch_size` (a split of videos never sits in
    memory); features go out as they come, one tar (or more, past `max_shard_bytes`).
    """
    store = storage_for(dtype, storage_dtype)
    shard_dir, out_dir = Path(shard_dir), Path(out_dir)
    meta = read_json(shard_dir / "meta.json")
    mods = meta["modalities"]
    missing = [m for m in mods if m not in encoders]
    if missing:
        raise ValueError(f"embed.encoders: no encoder configured for modality {missing} "
                         f"(task '{meta['task']}')")
    rank, world = _world()
    state = _process_group() if world > 1 else None
    enc = {m: get_encoder(encoders[m], m, dtype) for m in mods}  # loaded once per job
    n = SampleStream(shard_dir, shuffle=False, rank=0, world_size=1).n
    batches = -(-n // batch_size)
    first, last = rank * batches // world, (rank + 1) * batches // world
    stream = _Run(shard_dir, first * batch_size, last * batch_size)
    dims: dict[str, int] = {}
    records = _records(stream, enc, encoders, mods, batch_size, store, dims, meta["task"],
                       rank, world)

    if state is None:
        with atomic_dir(out_dir) as tmp:
            total = _finish(tmp, records, n, max_shard_bytes, meta, encoders, enc, mods, dims,
                            store, dtype)
        return total
    parts = out_dir.parent / f".{out_dir.name}.parts"
    if state.is_main_process:
        shutil.rmtree(parts, ignore_errors=True)
        parts.mkdir(parents=True)
    state.wait_for_everyone()
    with atomic_dir(parts / f"rank{rank:05d}") as tmp:
        write_shards(tmp, records, max(1, len(stream)), "", None, meta.get("split"))
        write_json(tmp / "dims.json", dims)
    state.wait_for_everyone()
    total = 0
    if state.is_main_process:
        ranks = [parts / f"rank{r:05d}" for r in range(world)]
        for r in ranks:
            for m, d in read_json(r / "dims.json").items():
                if dims.setdefault(m, d) != d:
                    raise ValueError(f"{r}: encoder '{encoders[m]}' gave {d}-d '{m}' features "
                                     f"where rank 0 gave {dims[m]}-d ones")
        with atomic_dir(out_dir) as tmp:
            total = _finish(tmp, _reread(ranks), n, max_shard_bytes, meta, encoders, enc, mods,
                            dims, store, dtype)
        shutil.rmtree(parts, ignore_errors=True)
    state.wait_for_everyone()
    return total


def _records(stream, enc, encoders, mods, batch_size, store, dims, task, rank, world
             ) -> Iterator[dict]:
    """Feature records of this rank's batches, in shard order."""
    desc = f"embed {task}" + (f" [{rank}/{world}]" if world > 1 else "")
    for batch in tqdm(stream.compose(wds.batched(batch_size, collation_fn=None)), desc=desc,
                      total=-(-len(stream) // batch_size), leave=False, disable=None):
        feats = {m: _encode(enc[m], batch, m).astype(store) for m in mods}
        for m, x in feats.items():
            if dims.setdefault(m, int(x.shape[1])) != x.shape[1]:
                raise ValueError(f"{batch[0]['__url__']}: encoder '{encoders[m]}' gave "
                                 f"{x.shape[1]}-d '{m}' features after {dims[m]}-d ones")
        for i, s in enumerate(batch):
            rec = {"__key__": s["__key__"], "json": s["json"]}
            if "cls" in s:
                rec["cls"] = s["cls"]
            for m in mods:
                rec[f"{m}.npy"] = npy_bytes(feats[m][i])
            yield rec


def _reread(ranks: list[Path]) -> Iterator[dict]:
    """The ranks' part records in rank order, as written (tar member bytes unchanged)."""
    for r in ranks:
        for s in iter_samples(r):
            yield {k: v for k, v in s.items() if k != "__url__"}


def _finish(tmp: Path, records, n: int, max_shard_bytes, meta, encoders, enc, mods, dims,
            store: str, dtype: str) -> int:
    sizes = write_shards(tmp, records, max(1, n), "", max_shard_bytes, meta.get("split"))
    text_spec = encoders.get("text", "precomputed")
    if meta.get("classes") and text_spec.partition(":")[0] != "precomputed":
        text_enc = enc["text"] if "text" in enc else get_encoder(encoders["text"], "text", dtype)
        prompts = _class_prompts(meta["classes"], meta.get("templates") or ["{}"], text_enc)
        save_tensors(tmp / "classes.safetensors", prompts)
    extra = {} if dtype == "float32" else {"model_dtype": dtype}  # float32 runs: meta as before
    write_json(tmp / "meta.json", {**meta, "encoders": {m: encoders[m] for m in mods},
                                   "dims": dims, "dtype": store, **extra,
                                   DIGESTS: record_digests(tmp)})
    return sum(sizes.values())


def _encode(encoder, batch: list[dict], modality: str) -> np.ndarray:
    items = [_payload(s, modality) for s in batch]
    where = [f"{s['__url__']}:{s['__key__']}.{k}" for s, (k, _) in zip(batch, items, strict=True)]
    return encoder.encode([v for _, v in items], where)


def _class_prompts(classes: list[str], templates: list[str], text_encoder) -> dict:
    """Text features of every (class, template) prompt: the zero-shot classifiers' raw material.

    An encoder with its own class embeddings (UniBind's class centres) gives them instead.
    """
    import torch

    own = getattr(text_encoder, "class_features", None)
    emb = own(classes) if own is not None else None
    if emb is None:
        texts = [t.format(c) for c in classes for t in templates]
        emb = text_encoder.encode(texts, [f"class prompt '{t}'" for t in texts])
        emb = emb.reshape(len(classes), len(templates), -1)
    return {"prompts": torch.from_numpy(np.ascontiguousarray(emb, np.float32)),
            "class_ids": torch.arange(len(classes))}
