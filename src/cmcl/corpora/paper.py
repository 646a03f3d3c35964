"""The adapters of the DNS paper's 11-step sequence (METHODS.md section 5), registered on import.

One module per dataset, each reading the layout the dataset is distributed in:

| steps | dataset | adapter | modalities |
|---|---|---|---|
| 1 | UCF101 | `ucf101` | video, text |
| 2 | ESC-50 | `esc50` | audio, text |
| 3 | NYUDv2 | `nyudv2` | image, depth |
| 4 | Clotho | `clotho` | audio, text |
| 5-7 | VGGSound-S | `vggsound` | video, audio, text |
| 8-10 | TVL | `tvl` | image, tactile, text |
| 11 | LLVIP | `llvip` | image, thermal |

The vision side of NYUDv2, TVL and LLVIP is one modality, `image`, so it shares one head, as
in the authors' code. Pre-extracted features of the authors' frozen encoders are imported by
`cmcl.corpora.features_h5` instead.
"""

from cmcl.corpora import clotho, esc50, llvip, nyudv2, tvl, ucf101, vggsound  # noqa: F401

PAPER_ADAPTERS = ("ucf101", "esc50", "nyudv2", "clotho", "vggsound", "tvl", "llvip")
