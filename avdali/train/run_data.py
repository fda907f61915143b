"""A run's datasets as loaders, and how their evaluation is logged: one path for a run of one or several datasets.

``RunData`` builds, from the run's plan (``plan.RunPlan``), the training loader (the dataset's own; for several
datasets their ``data.mixture.MixtureLoader``), each dataset's validation loader and, at the end, its test loader.
``evaluate`` runs every dataset's loader once and logs what it measured under one rule of tags:

- one dataset: ``<role>/<metric>`` and ``<role>/confusion`` (``val/ua``, ``test/acc``);
- several (a joint run): ``<role>/<dataset>/<metric>``, ``<role>/<dataset>/confusion`` and ``<role>/joint``, the value
  of the best.pt rule (``plan.rule_text``);
- a single-stream modality of the test (``modality.role_tag``): the same under ``test/audio_only``, ``test/video_only``.
"""

from __future__ import annotations

from typing import Any, Callable

from avdali.data.mixture import MixtureLoader
from avdali.train.modality import role_tag
from avdali.train.plan import JOINT_METRIC, DatasetPart, RunPlan, best_metric, joint_value, rule_text


class RunData:
    """The loaders of a run's datasets and their evaluation's logging (``build``: ``data.build.build_loader``)."""

    def __init__(self, cfg, plan: RunPlan, build: Callable, *, device: str, rank: int, world_size: int, seed: int,
                 local_ranks: int = 1):
        self.cfg, self.plan, self.build = cfg, plan, build
        self.common = dict(device=device, rank=rank, world_size=world_size, seed=seed, local_ranks=local_ranks)
        loaders = [self._loader(p, p.train, train=True) for p in plan.parts]
        if plan.joint:
            self.train_loader = MixtureLoader(loaders, [p.weight for p in plan.parts],
                                              batch_size=cfg.data.pipeline.batch_size, world_size=world_size, rank=rank,
                                              seed=seed, names=[p.dataset for p in plan.parts])
        else:
            self.train_loader = loaders[0]
        self.val_loaders = {p.dataset: self._loader(p, p.val, train=False) for p in plan.parts}
        self.metric = best_metric(cfg.train, plan)
        """The validation value that picks best.pt (``val/<metric>``)."""
        self.rule = rule_text(cfg.train, plan) if plan.joint else None
        """A joint run's best.pt rule in words (``mean(ravdess/ua, meld/weighted_f1)``), stored in its checkpoints."""

    def _loader(self, part: DatasetPart, splits: tuple[str, ...], *, train: bool):
        return self.build(self.cfg.data.loader_config(part.shards), splits, train=train, **self.common)

    def test_loaders(self) -> dict:
        """Each dataset's test loader (datasets without test splits have none)."""
        return {p.dataset: self._loader(p, p.test, train=False) for p in self.plan.parts if p.test}

    def evaluate(self, role: str, loaders: dict, evaluate_fn: Callable, writer, step: int,
                 class_names) -> dict[str, dict[str, float]]:
        """Run ``evaluate_fn`` (loader → {modality: ``evaluate``'s metrics}) once over each of ``loaders`` (dataset →
        loader), log every modality's scalars and confusion matrices under its tags, and return modality → the flat
        scalars: the metrics for one dataset; ``{"<dataset>/<metric>": …, "joint": …}`` for several."""
        measured = {}
        for name, loader in loaders.items():
            loader.set_epoch(0)
            measured[name] = evaluate_fn(loader)
        modalities = next(iter(measured.values())).keys() if measured else ()
        return {m: self._log(role_tag(role, m), {name: per[m] for name, per in measured.items()}, writer, step,
                             class_names) for m in modalities}

    def _log(self, tag: str, per_dataset: dict[str, dict], writer, step: int, class_names) -> dict[str, float]:
        flat, scalars_of = {}, {}
        for name, metrics in per_dataset.items():
            scalars = {k: v for k, v in metrics.items() if k != "confusion"}
            where = f"{tag}/{name}" if self.plan.joint else tag
            writer.scalars(where, scalars, step)
            writer.confusion(f"{where}/confusion", metrics["confusion"], class_names, step)
            scalars_of[name] = scalars
            flat.update({f"{name}/{k}": v for k, v in scalars.items()} if self.plan.joint else scalars)
        train = self.cfg.train
        needed = [p.dataset for p in self.plan.parts] if train.joint_metric == "mean" else [train.joint_metric]
        if self.plan.joint and all(name in scalars_of for name in needed):
            flat[JOINT_METRIC] = joint_value(train, self.plan, scalars_of)
            writer.scalars(tag, {JOINT_METRIC: flat[JOINT_METRIC]}, step)
        return flat

    def test_line(self, tag: str, scalars: dict[str, float], epoch: int) -> str:
        """What the Reporter says of best.pt's test metrics under ``tag`` (``test``, ``test/audio_only`` …)."""
        if self.plan.joint:
            return (f"{tag} (best.pt from epoch {epoch}): "
                    + " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if not k.endswith(("num_samples", "loss"))))
        return (f"{tag} ({', '.join(self.plan.test)}, best.pt from epoch {epoch}): "
                + " ".join(f"{k} {v:.4f}" for k, v in scalars.items() if k != "num_samples")
                + f" on {scalars['num_samples']} clips")

    def checkpoint_fields(self) -> dict[str, Any]:
        """What a checkpoint records of the datasets beside the metric: a joint run's best.pt rule."""
        return {"metric_rule": self.rule} if self.plan.joint else {}

    def summary(self, run: str) -> str:
        """The run's first line: the datasets and their splits, then ``run`` (loader, ranks, precision, steps)."""
        if self.plan.joint:
            parts = " · ".join(
                f"{p.dataset} ({p.shards}): train {'+'.join(p.train)} ({p.train_samples} clips, p={p.weight:.2f}), "
                f"val {'+'.join(p.val)}, test {'+'.join(p.test) or '-'}" for p in self.plan.parts)
            return f"joint {self.plan.dataset}: {parts} · best.pt by {self.rule} · {run}"
        plan = self.plan
        return (f"{plan.dataset}: train {'+'.join(plan.train)} ({self.train_loader.num_samples} clips), "
                f"val {'+'.join(plan.val)}, test {'+'.join(plan.test) or '-'} · {run} · metric {self.cfg.train.metric}")
