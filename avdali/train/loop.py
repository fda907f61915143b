"""The training loop: one rank's run from resolved config to best checkpoint (``Trainer``; ``run.py`` starts it).

The step follows nanoGPT's order: set lr → autocast forward → (scaled) backward → clip → step →
``zero_grad(set_to_none=True)``. The device is synchronised only at logging steps (``train.log_every``), where the
running sums are all-reduced over ranks.

A step whose loss or gradient norm is not finite changes nothing: the fused AdamW kernel reads a
``found_inf`` flag on the device (as GradScaler does for fp16) and skips the update without a host sync.
Such steps are counted; ``train.max_bad_steps`` of them in a row stop the run, keeping the last checkpoint.

One path for every run: the datasets' loaders, and how validation and test are logged, come from the plan
(``run_data.RunData``); a run of one dataset is a run of one part. What can be read apart lives beside it: the
logging window's sums (``log_window.py``), the checkpoint state (``checkpoint.py``), batch → model inputs and
autocast (``model_inputs.py``), the split plan (``plan.py``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from avdali.data.build import build_loader
from avdali.errors import AvdaliError
from avdali.labels import LABEL_SPACES
from avdali.models.avfusion import build_model
from avdali.train import checkpoint as ckpt
from avdali.train.config import RunConfig
from avdali.train.config_toml import dump_config
from avdali.train.distributed import DistInfo, all_gather_objects, barrier, broadcast_buffers
from avdali.train.evaluate import evaluate_modalities
from avdali.train.log_window import LogWindow
from avdali.train.metrics_writer import MetricsWriter
from avdali.train.modality import dropout_masks, hparam_metrics, role_tag, servable_modalities
from avdali.train.model_inputs import AMP_DTYPES, autocast, model_video, to_device
from avdali.train.plan import RunPlan, balanced_class_weights
from avdali.train.reporting import NullReporter, RankReport, Reporter, TrainResult
from avdali.train.run_data import RunData


class TrainingStopped(AvdaliError):
    """Too many non-finite steps in a row: the run stopped; the last good checkpoint is kept."""


# --- schedule ----------------------------------------------------------------------------------------------


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine decay to ``min_lr``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (lr - min_lr)


# --- the trainer ------------------------------------------------------------------------------------------


class Trainer:
    """Holds one rank's model, optimizer, loaders and counters; ``fit`` runs the epochs."""

    def __init__(self, cfg: RunConfig, plan: RunPlan, info: DistInfo, *, resume: bool = False,
                 reporter: Reporter | None = None):
        self.cfg = cfg
        self.info = info
        self.device = info.device
        self.reporter = reporter or NullReporter()
        self.run_dir = Path(cfg.train.run_dir)
        self.amp_dtype = AMP_DTYPES[cfg.train.amp]
        self.class_names = LABEL_SPACES[cfg.data.pipeline.label_space]
        self.plan = plan

        # Same seed on every rank for the initial weights (DDP also broadcasts rank 0's), then a rank's own
        # stream for dropout.
        torch.manual_seed(cfg.train.seed)
        if self.device.type == "cuda":  # float32 matmuls/convs (amp = "none", and the fp32 parts under AMP) on TF32 cores
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.raw_model = build_model(cfg.model).to(self.device)
        if cfg.train.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)
        torch.manual_seed(cfg.train.seed + 1000 * info.rank)

        self.data = RunData(cfg, plan, functools.partial(build_loader, say=self.reporter.message,
                                                         progress=self._cache_progress),
                            device=self.device.type, rank=info.rank, world_size=info.world_size, seed=cfg.train.seed,
                            local_ranks=info.local_world_size)
        self.metric = self.data.metric
        """The validation value that picks best.pt (``val/<metric>``)."""
        self.train_loader = self.data.train_loader
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch < 1:
            raise AvdaliError(f"{cfg.data.shards}: training splits {', '.join(self.plan.train)} give no batch per rank")
        self.total_steps = cfg.train.epochs * self.steps_per_epoch
        optim = cfg.optim
        self.warmup_steps = optim.warmup_steps or round(optim.warmup_frac * self.total_steps)

        self.params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer(self.params)
        self.buffers = [b for b in self.raw_model.buffers() if b.is_floating_point()]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.amp == "fp16")
        self.loss_weight = self._class_weights()

        # Compile, then wrap in DDP; keep the raw module for state dicts (no _orig_mod./module. prefixes).
        model = torch.compile(self.raw_model) if cfg.train.compile else self.raw_model
        self.eval_model = model
        if info.distributed:
            device_ids = [info.local_rank] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        self.model = model

        self.step = 0
        self.epoch = 0
        self.best_metric = -math.inf
        self.bad_steps_total = 0
        self.last_val: dict[str, float] = {}
        self.test_robustness: dict[str, dict[str, float]] = {}  # modality → best.pt's test metrics (``_test``)
        self._epoch_indices: list[torch.Tensor] = []
        if resume:
            self._load(self.run_dir / ckpt.LAST)
        if info.is_main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                dump_config(cfg, self.run_dir / "config.toml")
            except OSError as e:  # read-only or full output folder: say where, before any training
                raise AvdaliError(f"{e.filename or self.run_dir}: cannot write the run folder ({e.strerror or e})") from None
        # purge_step: events a crashed run logged after the checkpoint are dropped, so curves continue cleanly.
        self.writer = MetricsWriter(self.run_dir, enabled=info.is_main, purge_step=self.step + 1 if resume else None)
        self.window = LogWindow(self.device)
        self.lr = cfg.optim.lr

    # -- setup ---------------------------------------------------------------------------------------------

    def _build_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        optim = self.cfg.optim
        # Decay weight matrices and kernels, not biases, norms or LSTM bias vectors (nanoGPT's grouping).
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": optim.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        # fused: one kernel per step, and it honours the found_inf flag used to skip non-finite steps.
        return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, fused=True)

    def _class_weights(self) -> torch.Tensor | None:
        if self.cfg.optim.class_weights == "none":
            return None
        if self.cfg.data.pipeline.label_space != "unified":
            raise AvdaliError(
                f'optim.class_weights = "balanced" counts unified labels from the manifest; '
                f"data.label_space is {self.cfg.data.pipeline.label_space!r}"
            )
        return torch.tensor(balanced_class_weights(list(self.plan.train_class_counts)), dtype=torch.float32, device=self.device)

    # -- the run ---------------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        self.reporter.start(self.run_dir, self._summary())
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                self.epoch += 1
                self._validate_and_save()
            ranks = self._rank_reports()
            test = self._test() if cfg.test_at_end and self.plan.test else {}
            self.writer.hparams(_flatten(self.cfg.to_dict()), {
                f"val_best_{self.metric}": self.best_metric, **hparam_metrics(self.test_robustness)})
        finally:
            failing = sys.exc_info()[1] is not None
            self.reporter.close()
            try:
                self.writer.close()
            except AvdaliError:
                if not failing:
                    raise  # else the error already on its way (e.g. a checkpoint that could not be written) says more
        return TrainResult(
            run_dir=self.run_dir,
            step=self.step,
            epoch=self.epoch,
            metric=self.metric,
            best_metric=self.best_metric,
            val=self.last_val,
            test=test,
            robustness=self.test_robustness,
            bad_steps=self.bad_steps_total,
            ranks=ranks,
            rank=self.info.rank,
        )

    def _rank_reports(self) -> list[RankReport]:
        digest = hashlib.sha256()
        for tensor in self.raw_model.state_dict().values():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        indices = [i for i in torch.cat(self._epoch_indices).cpu().tolist() if i >= 0] if self._epoch_indices else []
        reports = all_gather_objects(RankReport(self.info.rank, digest.hexdigest(), sorted(indices)))
        if len({r.weights_sha256 for r in reports}) > 1:
            raise AvdaliError("the ranks' model weights differ after training (DDP replicas out of sync)")
        return reports

    def _train_epoch(self) -> None:
        self.train_loader.set_epoch(self.epoch)
        self.model.train()
        self.reporter.epoch_start(self.epoch + 1, self.cfg.train.epochs, self.steps_per_epoch)
        batches = iter(self.train_loader)
        self._epoch_indices = []
        self.window.restart_clock()
        for i in range(self.steps_per_epoch):
            wait_start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                raise AvdaliError(
                    f"training loader gave {i} batches, not the {self.steps_per_epoch} its len() promised"
                ) from None
            self.window.add_wait(time.perf_counter() - wait_start)
            self._train_step(batch)
            self.reporter.advance()
            if self.step % self.cfg.train.log_every == 0 or i == self.steps_per_epoch - 1:
                self._log_window()

    def _train_step(self, batch) -> None:
        optim = self.cfg.optim
        lr = lr_at(self.step, lr=optim.lr, min_lr=optim.min_lr, warmup_steps=self.warmup_steps,
                   total_steps=self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.lr = lr
        batch = to_device(batch, self.device)
        video = model_video(batch.video, self.cfg.train.channels_last)
        # A non-finite batch also poisons BatchNorm running statistics in the forward; keep a copy to put back.
        saved_buffers = [b.clone() for b in self.buffers]
        audio_present, video_present = batch.audio_present.bool(), batch.video_present.bool()
        run = self.cfg.train
        if run.drop_audio > 0 or run.drop_video > 0:  # modality dropout; without it nothing is drawn
            audio_present, video_present = dropout_masks(
                audio_present, video_present, drop_audio=run.drop_audio, drop_video=run.drop_video,
                seed=run.seed, rank=self.info.rank, step=self.step)
        with autocast(self.device, self.amp_dtype):
            logits = self.model(video, batch.audio, batch.audio_len,
                                audio_present=audio_present, video_present=video_present)
        loss = self._loss(logits.float(), batch.label, batch.valid)
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        max_norm = optim.grad_clip if optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        if self.scaler.is_enabled():
            # GradScaler skips inf/nan gradients itself (that is how it calibrates); a bad *loss* is what we count.
            bad = ~torch.isfinite(loss.detach())
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            bad = ~torch.isfinite(grad_norm)  # a non-finite loss gives non-finite gradients too
            self.optimizer.found_inf = bad.float()  # read on the device by the fused kernel: no sync
            self.optimizer.step()
            del self.optimizer.found_inf
        self.optimizer.zero_grad(set_to_none=True)
        for buffer, saved in zip(self.buffers, saved_buffers):
            buffer.copy_(torch.where(bad, saved, buffer))  # on the device: no sync

        self.window.add_step(loss, logits, batch.label, batch.valid, bad)  # on the device until the logging step
        self._epoch_indices.append(torch.where(batch.valid.bool(), batch.index, -1))  # a boolean mask would sync on CUDA
        self.step += 1

    def _loss(self, logits: torch.Tensor, label: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the valid samples (padding counts for nothing), class-weighted if asked."""
        per_sample = F.cross_entropy(logits, label, weight=self.loss_weight,
                                     label_smoothing=self.cfg.optim.label_smoothing, reduction="none")
        weight = valid.float()
        if self.loss_weight is not None:
            weight = weight * self.loss_weight[label]
        return (per_sample * valid).sum() / weight.sum().clamp_min(1e-6)

    # -- logging -----------------------------------------------------------------------------------------

    def _log_window(self) -> None:
        window = self.window.close()  # the only device sync of the training loop
        self.bad_steps_total += window.bad_steps
        rates = window.rates()
        values = {"loss": rates["loss"], "acc": rates["acc"], "lr": self.lr, "clips_per_s": rates["clips_per_s"],
                  "data_wait_frac": rates["data_wait_frac"], "step_ms": rates["step_ms"],
                  "bad_steps": float(self.bad_steps_total)}
        if self.device.type == "cuda":
            values["mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
        self.writer.scalars("train", values, self.step)
        # On disk now, not in 2 min (SummaryWriter's flush_secs): live curves, and a killed run's last steps are kept
        # for a resume to purge. One small write per logging step.
        self.writer.flush()
        self.reporter.log(self.step, values, window)
        if window.bad_run >= self.cfg.train.max_bad_steps:
            raise TrainingStopped(
                f"stopped at step {self.step}: {window.bad_run} steps in a row had a non-finite loss or gradient "
                f"(train.max_bad_steps = {self.cfg.train.max_bad_steps}); the last good checkpoint is "
                f"{self.run_dir / ckpt.LAST} (try a lower optim.lr or train.amp = \"bf16\")"
            )

    # -- evaluation and checkpoints ------------------------------------------------------------------

    def _evaluate(self, loader, modalities: tuple[str, ...] = ("both",)) -> dict[str, dict[str, Any]]:
        return evaluate_modalities(self.eval_model, loader, modalities, device=self.device,
                                   num_classes=len(self.class_names), amp_dtype=self.amp_dtype,
                                   channels_last=self.cfg.train.channels_last)

    def _validate_and_save(self) -> None:
        broadcast_buffers(self.raw_model)
        # each dataset's val splits: val/* (val/<dataset>/* and val/joint by the declared rule for several)
        scalars = self.data.evaluate("val", self.data.val_loaders, self._evaluate, self.writer, self.step,
                                     self.class_names)["both"]
        value = scalars[self.metric]
        improved = value > self.best_metric
        if improved:
            self.best_metric = value
        self.last_val = scalars
        self.writer.scalars("val", {f"best_{self.metric}": self.best_metric}, self.step)
        self.writer.flush()
        state = self._state(scalars)
        if self.info.is_main:
            ckpt.save_checkpoint(self.run_dir / ckpt.LAST, state)
            if improved:
                ckpt.save_checkpoint(self.run_dir / ckpt.BEST, state)
        self.reporter.epoch_end(self.epoch, self.cfg.train.epochs, {**scalars, "best": self.best_metric,
                                                                     "metric": self.metric,
                                                                     "step": self.step})

    def _test(self) -> dict[str, float]:
        barrier()  # rank 0 wrote best.pt; the others read it
        best = ckpt.load_checkpoint(self.run_dir / ckpt.BEST, map_location=self.device)
        self.raw_model.load_state_dict(best["model"])
        # One pass per dataset: both streams, plus each single stream the run trained a missing embedding for
        # (modality.py).
        modalities = servable_modalities(self.cfg.to_dict())
        per_modality = self.data.evaluate("test", self.data.test_loaders(), lambda loader: self._evaluate(loader, modalities),
                                          self.writer, self.step, self.class_names)
        for modality, scalars in per_modality.items():
            self.test_robustness[modality] = scalars
            self.reporter.message(self.data.test_line(role_tag("test", modality), scalars, best["epoch"]))
        return self.test_robustness["both"]

    def _state(self, val: dict[str, float]) -> dict[str, Any]:
        counters = ckpt.Counters(self.step, self.epoch, self.best_metric, self.bad_steps_total, val)
        state = ckpt.training_state(
            self.raw_model, self.optimizer, self.scaler, counters,
            schedule={"kind": "warmup_cosine", "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                      "lr": self.cfg.optim.lr, "min_lr": self.cfg.optim.min_lr},
            metric=self.metric, world_size=self.info.world_size, config=self.cfg.to_dict(),
            rng=all_gather_objects(ckpt.rng_state()),  # every rank's streams, so a resume continues each exactly
        )  # fmt: skip
        state.update(self.data.checkpoint_fields())  # a joint run's rule: "mean(ravdess/ua, meld/weighted_f1)"
        return state

    def _load(self, path: Path) -> None:
        counters = ckpt.resume_training_state(path, self.raw_model, self.optimizer, self.scaler, device=self.device,
                                              rank=self.info.rank, world_size=self.info.world_size)
        self.step, self.epoch, self.best_metric = counters.step, counters.epoch, counters.best_metric
        self.bad_steps_total, self.last_val = counters.bad_steps, counters.val
        self.reporter.message(f"resumed {path} at epoch {self.epoch}, step {self.step}")

    def _cache_progress(self, done: int, total: int) -> None:
        self.reporter.progress("caching decoded frames", done, total)

    def _summary(self) -> str:
        c = self.cfg
        return self.data.summary(
            f"{c.data.pipeline.loader} loader · {self.info.world_size} rank(s) on {self.device.type} · amp {c.train.amp} · "
            f"compile {c.train.compile} · {self.steps_per_epoch} steps/epoch × {c.train.epochs} epochs"
        )


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
