"""``kbench export``: a trial's pre-trained model as a ``save_pretrained`` directory with a model card."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from transformers.utils import SAFE_WEIGHTS_NAME

from kbench.core.errors import KbenchError
from kbench.core.paths import atomic_dir
from kbench.engine.checkpoints import (
    CONFIG_FILE,
    MODEL_ARTIFACT,
    is_run_uri,
    local_checkpoint,
    run_id_of,
    run_uri,
    weights_digest,
)
from kbench.models.zoo import MODELS

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def export(source: str, out: Path, tracking_uri: str) -> str:
    """Write ``source`` (a run id, ``runs:/<id>/model`` or a checkpoint directory) to ``out`` as config.json,
    model.safetensors and a README.md model card; all or nothing. Returns a one-line summary."""
    run = None
    if RUN_ID.match(source) or is_run_uri(source):
        run = _run(run_id_of(source) if is_run_uri(source) else source, tracking_uri)
        source = run_uri(run.info.run_id)
    path = local_checkpoint(source, tracking_uri)
    model_type = json.loads((path / CONFIG_FILE).read_text()).get("model_type")
    name = next((n for n in MODELS.names() if MODELS.get(n).config_class.model_type == model_type), None)
    if name is None:
        raise KbenchError(f"{source} holds a {model_type or 'untyped'} model, which is no zoo entry's")
    from kbench.engine.checkpoints import load_checkpoint

    model = load_checkpoint(name, path)
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        digest = weights_digest(tmp / SAFE_WEIGHTS_NAME)
        (tmp / "README.md").write_text(model_card(name, model.config.to_dict(), source, run, digest, out))
    return f"exported {name} from {source} to {out}"


def _run(run_id: str, tracking_uri: str) -> Any:
    """The trial run ``run_id``, refused unless it logged a model."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
        logged = [a.path for a in client.list_artifacts(run_id)]
    except MlflowException as exc:
        raise KbenchError(f"no run {run_id} in {tracking_uri}: {exc.message.splitlines()[0]}") from None
    if MODEL_ARTIFACT not in logged:
        raise KbenchError(f"run {run_id} logged no model (a trial's run logs one under {MODEL_ARTIFACT}/)")
    return run


def model_card(name: str, config: dict[str, Any], source: str, run: Any, digest: str, out: Path) -> str:
    """The README.md of an exported model: what it is, where it came from, its results, how to load it."""
    tags = run.data.tags if run else {}
    options = {k: v for k, v in config.items() if not isinstance(v, dict | list) and not k.startswith("_")}
    lines = [
        "---",
        "library_name: transformers",
        "tags: [kbench, vision-language, fashion]",
        "---",
        f"# {name} ({config.get('model_type')})",
        "",
        f"{MODELS.describe(name)}",
        "",
        f"Exported by kbench from `{source}`; weights sha256 `{digest}`.",
        "",
        "## Data and configuration",
        "",
        "| | |",
        "|---|---|",
    ]
    facts = {
        "dataset": tags.get("kbench.dataset"),
        "data fingerprint": tags.get("kbench.data_fingerprint"),
        "profile": tags.get("kbench.profile"),
        "seed": tags.get("kbench.seed"),
        "config hash": tags.get("kbench.config_hash"),
        "kbench": tags.get("kbench.version"),
        "git commit": tags.get("kbench.git_sha"),
    }
    lines += [f"| {k} | `{v}` |" for k, v in facts.items() if v]
    lines += ["", "## Options", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(options.items())]
    metrics = {k: v for k, v in (run.data.metrics if run else {}).items() if _is_result(k)}
    if metrics:
        lines += ["", "## Results of the run", "", "| task | metric | value |", "|---|---|---|"]
        for key in sorted(metrics):
            task, metric = key.split("/", 1)
            lines.append(f"| {task} | {metric} | {metrics[key]:.4g} |")
    lines += [
        "",
        "## Loading",
        "",
        "```python",
        "import kbench.models  # registers kbench's model types with transformers' Auto classes",
        "from transformers import AutoModel",
        "",
        f'model = AutoModel.from_pretrained("{out}")',
        "```",
        "",
        "Fine-tune and evaluate it on kbench's tasks without pre-training:",
        "",
        "```",
        f"kbench run --model {name} --checkpoint {out}",
        "```",
        "",
    ]
    return "\n".join(lines)


def _is_result(key: str) -> bool:
    """A task metric or a sum, not a curve, a timing or a memory peak."""
    head, _, metric = key.partition("/")
    return bool(metric) and head not in ("time", "mem", "pretrain") and not metric.startswith("finetune_")
