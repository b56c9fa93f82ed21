"""The ``vpg`` command: LightningCLI over vpg's methods and DataModules.

    vpg fit  --config experiments/shapes/clip_pretrain.yaml
    vpg test --config experiments/shapes/zeroshot_cls.yaml [--ckpt_path ...]

Adds to LightningCLI: TensorBoard logs under ``logs/<experiment>/version_N`` (experiment =
the last config file's stem unless ``trainer.logger`` says otherwise), a checkpoint callback
with ``last.ckpt``, ``metrics.json`` after ``test``/``validate`` (path printed as the last
line), training-free methods on ``fit`` (validation only, zero optimizer steps), and clean
error messages for user errors.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import datasets
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import vpg  # noqa: F401  (imports every method so class paths and checkpoints resolve)
from vpg.data.datamodules import VPGDataModule
from vpg.errors import VPGError
from vpg.methods.base import VPGModule

log = logging.getLogger("vpg")


class VPGCLI(LightningCLI):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(VPGModule, VPGDataModule, *args, subclass_mode_model=True, subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": "logs", "name": None}},
        })

    def before_instantiate_classes(self) -> None:
        """TensorBoard logs go to logs/<experiment>/version_N; experiment = last config's stem."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        logger = cfg["trainer"].get("logger")
        init = getattr(logger, "init_args", None) if logger is not None else None
        if init is not None and str(getattr(logger, "class_path", "")).endswith("TensorBoardLogger") \
                and init.get("name") is None:
            configs = cfg.get("config") or []
            init["name"] = Path(str(configs[-1])).stem if configs else "default"

    def _parse_ckpt_path(self) -> None:
        """The config describes the model; ``--ckpt_path`` supplies weights and trainer state only.

        LightningCLI (2.6) would parse the checkpoint's saved hyperparameters *over* the config and
        the command line, so `vpg test --config X --ckpt_path C --model.init_args.k v` silently
        ignored `k`. A config that does not match the checkpoint fails loudly in load_state_dict.
        """

    # -- training-free methods: `fit` validates and makes no optimizer step
    def fit(self, model, datamodule=None, ckpt_path=None, **kwargs):
        if isinstance(model, VPGModule) and not model.has_trainable_parameters():
            print(f"{type(model).__name__} has no trainable parameters: running validation only (0 optimizer steps)")
            self.trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)
            self._write_metrics("validate")
            return
        self.trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)

    def after_test(self) -> None:
        self._write_metrics("test")

    def after_validate(self) -> None:
        self._write_metrics("validate")

    def _write_metrics(self, stage: str) -> None:
        trainer = self.trainer
        log_dir = Path(trainer.log_dir or ".")  # a collective under DDP: every rank asks
        if not trainer.is_global_zero:
            return
        metrics = {}
        for key, value in trainer.callback_metrics.items():
            value = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
            if isinstance(value, float) and not math.isnan(value):
                metrics[key] = value
        log_dir.mkdir(parents=True, exist_ok=True)
        path = (log_dir / "metrics.json").resolve()
        payload = {"stage": stage, "model": type(self.model).__name__, "metrics": metrics}
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        print(f"metrics: {path}")


def _user_error(err: BaseException) -> VPGError | None:
    """The VPGError behind ``err``; jsonargparse wraps errors raised while instantiating classes."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, VPGError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def main(args: list[str] | None = None) -> None:
    """Console entry point; user errors print one message and exit 2 (VPG_DEBUG=1 re-raises)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("root").setLevel(logging.ERROR)
    datasets.disable_progress_bars()
    try:
        VPGCLI(args=args)
    except Exception as err:
        user = _user_error(err)
        if user is None or os.environ.get("VPG_DEBUG"):
            raise
        print(f"vpg: error: {user}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        # Lightning leaves the process group up; a live gloo group can abort the interpreter
        # at exit ("terminate called without an active exception") after a successful run.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


__all__ = ["VPGCLI", "main"]
