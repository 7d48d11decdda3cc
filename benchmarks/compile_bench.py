"""torch.compile (inductor) on the self-attention block vs eager, transformer encoder, CPU.

Synthetic 2,000 users / 500 items / 100k events, 2 layers, 4 epochs, 2 threads; a fresh inductor cache
measures the cold compile. Usage: TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/compile_bench.py
"""
import json
import tempfile
import time
from pathlib import Path
from tasks.synthetic import generate
from tasks.dask_cluster import DaskConfig, dask_client
from tasks.preprocess import PreprocessConfig, preprocess
from tasks.sources import SYNTH_SCHEMA, DataConfig, resolve_inputs
from tasks.validate import validate_processed, validate_raw
from validation.config import ValidationConfig
from tasks.features import ViewsConfig, build_views
from models.net import ModelConfig
from models.train import TrainConfig
from tasks.train import train
root = Path(tempfile.mkdtemp())
generate(2000, 500, 100_000, 0, root / "s")
with dask_client(DaskConfig(processes=False, n_workers=1), root) as c:
    inputs = resolve_inputs(DataConfig(source="files", events=str(root/"s/events"), users=str(root/"s/users.parquet"), items=str(root/"s/items.parquet"), schema=SYNTH_SCHEMA.model_dump()))
    raw = validate_raw(inputs, ValidationConfig(), c, root/"run"); res = preprocess(inputs, PreprocessConfig(), ValidationConfig(), c, root)
    validate_processed(res, ValidationConfig(), raw, root/"run")
views = build_views(Path(res.path), ViewsConfig(text_encoder="tfidf"), root/"cache")
m = ModelConfig(encoder="transformer", layers=2)
for mode in ("off", "on"):
    t = time.perf_counter()
    r = train(Path(res.path), views, m, TrainConfig(epochs=4, threads=2, progress=False, compile=mode), 0, root/mode, log=lambda x: None)
    h = r["history"]
    print(json.dumps({"compile": mode, "wall_s": round(time.perf_counter()-t,1), "epoch_s": [round(b-a,1) for a,b in zip([0]+[x["elapsed_s"] for x in h], [x["elapsed_s"] for x in h])], "best_val_ndcg": round(r["best_validation_ndcg@10"],4), "windows": r["training_windows"]}), flush=True)
