"""Turn a task's raw shards into feature shards with the frozen encoders (rule `embed`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cmcl.encoders import get_encoder
from cmcl.io import DIGESTS, atomic_dir, read_json, record_digests, save_tensors, write_json
from cmcl.shards import npy_bytes, write_shards
from cmcl.streams import SampleStream, batched


def _payload(sample: dict, modality: str) -> tuple[str, bytes]:
    for k, v in sample.items():
        if k.split(".", 1)[0] == modality and "." in k:
            return k, v
    raise ValueError(f"{sample.get('__url__')}: sample '{sample['__key__']}' has no '{modality}' "
                     "entry")


def embed_split(shard_dir: str | Path, out_dir: str | Path, encoders: Mapping[str, str],
                batch_size: int = 256, dtype: str = "float32",
                max_shard_bytes: int | None = None) -> int:
    """Encode every modality of every sample; write `<modality>.npy` feature shards.

    Raw samples are streamed in batches of `batch_size` (a split of videos never sits in
    memory); features go out as they come, one tar (or more, past `max_shard_bytes`).
    """
    meta = read_json(Path(shard_dir) / "meta.json")
    mods = meta["modalities"]
    missing = [m for m in mods if m not in encoders]
    if missing:
        raise ValueError(f"embed.encoders: no encoder configured for modality {missing} "
                         f"(task '{meta['task']}')")
    enc = {m: get_encoder(encoders[m], m) for m in mods}
    stream = SampleStream(shard_dir, shuffle=False, rank=0, world_size=1)
    dims: dict[str, int] = {}

    def records():
        for batch in tqdm(batched(stream, batch_size), desc=f"embed {meta['task']}",
                          total=-(-len(stream) // batch_size), leave=False, disable=None):
            feats = {m: _encode(enc[m], batch, m).astype(dtype) for m in mods}
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

    with atomic_dir(out_dir) as tmp:
        sizes = write_shards(tmp, records(), max(1, len(stream)), "", max_shard_bytes,
                             meta.get("split"))
        text_spec = encoders.get("text", "precomputed")
        if meta.get("classes") and text_spec.partition(":")[0] != "precomputed":
            text_enc = enc["text"] if "text" in enc else get_encoder(encoders["text"], "text")
            prompts = _class_prompts(meta["classes"], meta.get("templates") or ["{}"], text_enc)
            save_tensors(tmp / "classes.safetensors", prompts)
        write_json(tmp / "meta.json", {**meta, "encoders": {m: encoders[m] for m in mods},
                                       "dims": dims, "dtype": dtype,
                                       DIGESTS: record_digests(tmp)})
    return sum(sizes.values())


def _encode(encoder, batch: list[dict], modality: str) -> np.ndarray:
    items = [_payload(s, modality) for s in batch]
    where = [f"{s['__url__']}:{s['__key__']}.{k}" for s, (k, _) in zip(batch, items, strict=True)]
    return encoder.encode([v for _, v in items], where)


def _class_prompts(classes: list[str], templates: list[str], text_encoder) -> dict:
    """Text features of every (class, template) prompt: the zero-shot classifiers' raw material."""
    import torch

    texts = [t.format(c) for c in classes for t in templates]
    emb = text_encoder.encode(texts, [f"class prompt '{t}'" for t in texts])
    emb = emb.reshape(len(classes), len(templates), -1)
    return {"prompts": torch.from_numpy(emb), "class_ids": torch.arange(len(classes))}
