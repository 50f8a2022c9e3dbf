"""A whole fine-tuning run (SPEC §8): restore the backbone from a pretraining export → train → validate every epoch
(clean and PGD-20 accuracy on the held-out split) → classifier exports best_ra / best_sa / last → results.json.
The sequence around it (strategy, run directory, checkpoint, resume, loop) is the run skeleton's (`runs.run`);
`FinetuneRun` is what fine-tuning brings to it.

The test set is never read here: model selection uses the validation split carved from the training set.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from advss_tf import export, summaries, workspace
from advss_tf.config import FinetuneConfig, to_dict, versions
from advss_tf.data import datasets, pipeline
from advss_tf.data.datasets import DatasetInfo
from advss_tf.errors import UsageError
from advss_tf.models import post_resnet
from advss_tf.models.backbones import PARTS, BackboneConfig, build_routed
from advss_tf.models.classifier import ImageClassifier
from advss_tf.tasks.finetune import FROZEN_PARTS, FinetuneTask, trainable_variables
from advss_tf.tasks.table import check_image_shape
from advss_tf.training import cluster, loop, pseudo_labels, runs
from advss_tf.training.validation import ModelSelection, Validator, validation_steps

PRETRAIN_FORMAT = "advss_tf.pretrain"
DEFAULT_BACKBONE = "resnet18"  # without --pretrained and --backbone


# -- the pretrained backbone -----------------------------------------------------------------------------------------
def read_pretrained_info(path: str) -> dict[str, Any]:
    """The info of a pretraining export; UsageError for a missing, non-advss or non-pretraining SavedModel."""
    if not os.path.isdir(path):
        raise UsageError(f"--pretrained {path} does not exist; give <pretrain model_dir>/export/pretrain")
    info = export.read_info(path)
    if info.get("format") != PRETRAIN_FORMAT:
        raise UsageError(
            f"{path} is a {info.get('format', 'unknown')!r} export, not a pretraining export ({PRETRAIN_FORMAT})"
        )
    if "trunk" not in info.get("parts", []) or "backbone" not in info:
        raise UsageError(f"{path} holds no trunk (parts: {info.get('parts')}); it cannot initialise a classifier")
    return info


def resolve_backbone(cfg: FinetuneConfig) -> tuple[FinetuneConfig, dict[str, Any] | None]:
    """Fills in `cfg.backbone` from the export when not given; refuses an export of another architecture."""
    if not cfg.pretrained:
        if cfg.backbone:
            return cfg, None
        return dataclasses.replace(cfg, backbone=BackboneConfig(DEFAULT_BACKBONE, cfg.sync_bn)), None
    info = read_pretrained_info(cfg.pretrained)
    name = info["backbone"].get("name")
    if cfg.backbone is not None and cfg.backbone.name != name:
        raise UsageError(
            f"--backbone={cfg.backbone.name} but {cfg.pretrained} was pretrained with {name}; "
            f"drop --backbone to use the export's"
        )
    # The export's block definition (an export without `arch_version` predates it: version 1), whatever the default.
    sync_bn = cfg.backbone.sync_bn if cfg.backbone is not None else cfg.sync_bn
    return dataclasses.replace(cfg, backbone=BackboneConfig.from_dict(info["backbone"], sync_bn=sync_bn)), info


def pretrained_route(info: dict[str, Any], route: str | None, path: str) -> str | None:
    """The BatchNorm route fine-tuning restores from an export with several (`--pretrained_route`, default the
    adversarial one: what ACL fine-tunes from); None for an export with one, where choosing one is refused."""
    routes = info.get("routes", [])
    if len(routes) < 2:
        if route is not None:
            raise UsageError(f"--pretrained_route={route}: {path} has one BatchNorm route; drop --pretrained_route")
        return None
    route = route or post_resnet.ADVERSARIAL
    if route not in routes:
        raise UsageError(f"--pretrained_route={route} is not a route of {path}; valid: {', '.join(routes)}")
    return route


def restore_pretrained(
    path: str, info: dict[str, Any], model: ImageClassifier, route: str | None = None, head: bool = False
) -> list[str]:
    """Restores trunk (and stage 4 when the export has one; the head too with `head`) into `model`; every variable
    must match. From an export with BatchNorm routes (the contrastive tasks', on any backbone), `route`'s BatchNorms
    go into the classifier's one route.

    Returns:
      The restored part names.
    """
    parts = {"trunk": model.trunk}
    if "stage4" in info.get("parts", []):
        parts["stage4"] = model.stage4
    if head:
        if "head" not in info.get("parts", []):
            raise UsageError(f"--restore_head: {path} has no head (parts: {', '.join(info.get('parts', []))})")
        parts["head"] = model.head
    if route is None:
        export.restore_parts(path, **parts)
        return sorted(parts)
    # The export's parts as the contrastive tasks built them (every route), then `route`'s into the classifier's.
    routes = tuple(info["routes"])
    routed = {name: build_routed(model.backbone, name, routes) for name in PARTS if name in parts}
    export.restore_parts(path, **routed, **({"head": parts["head"]} if head else {}))  # a head has no BatchNorm
    for name, part in routed.items():
        post_resnet.copy_route(part, parts[name], route)
    return sorted(parts)


# -- the run ---------------------------------------------------------------------------------------------------------
def run(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tunes (or resumes) the run in `cfg.model_dir`, exports best_ra / best_sa / last, returns the results."""
    return runs.run(cfg, FinetuneRun(), overwrite)


class FinetuneRun(runs.RunKind):
    """Fine-tuning's parts of the run skeleton: the backbone from the export, the classifier and its objective,
    validation at every epoch end with the model selection it decides, and the results of the selection.

    One instance is one run: it keeps the pretraining export's info between `resolve` and `build`.
    """

    labels_for = "fine-tuning"  # the training set only, never the test set; labels of at least two classes

    def __init__(self):
        self.info: dict[str, Any] | None = None
        self.pseudo: dict[str, Any] | None = None  # the pseudo-labels of the whole training split, and their source

    def resolve(self, cfg: FinetuneConfig) -> FinetuneConfig:
        cfg, self.info = resolve_backbone(cfg)  # a foreign or missing export fails before anything is written
        info = self.info
        if info is not None:
            pretrained_route(info, cfg.pretrained_route, cfg.pretrained)  # a route the export lacks fails here
        if info is not None and cfg.mode == "linear" and "stage4" not in info.get("parts", []):
            raise UsageError(
                f"{cfg.pretrained} has no stage 4 (parts: {', '.join(info['parts'])}); --mode=linear would freeze a "
                "randomly initialised stage 4: use --mode=partial or full"
            )
        return cfg

    def batch_sizes(self, cfg: FinetuneConfig) -> tuple[int, ...]:
        return cfg.batch_size, cfg.val_batch_size

    def check_data(self, cfg: FinetuneConfig, data: runs.TrainingData) -> runs.TrainingData:
        if cfg.aux_rotation_weight:
            check_image_shape("rotation", data.info.image_shape)
        if cfg.pseudo_labels != pseudo_labels.NONE:
            data = self._pseudo_labelled(cfg, data)
        if cfg.val_examples:
            data = dataclasses.replace(data, x_val=data.x_val[: cfg.val_examples], y_val=data.y_val[: cfg.val_examples])
        return data

    def _pseudo_labelled(self, cfg: FinetuneConfig, data: runs.TrainingData) -> runs.TrainingData:
        """`data` with the pseudo-labels (k-means of the export's clean-route features, or those the export was
        trained on) in place of the labels, cut as `data` was; the classes are the clusters."""
        split = datasets.load(cfg.data, cfg.data.train_split)  # the whole split in its own order (assign_label.py)
        if cfg.pseudo_labels == pseudo_labels.KMEANS:
            features, route = pseudo_labels.export_features(cfg.pretrained, split.images)
            labels = pseudo_labels.kmeans_labels(features, cfg.kmeans_clusters, cfg.seed)
            source = {"kmeans": cfg.kmeans_clusters, "features_of": cfg.pretrained, "route": route, "seed": cfg.seed}
        else:
            labels = pseudo_labels.read_labels(cfg.pretrained, len(split.images))
            source = {"trained_on_by": cfg.pretrained}
            if labels.max() >= cfg.kmeans_clusters:
                raise UsageError(f"{cfg.pretrained}'s pseudo-labels go up to {labels.max()}: raise --kmeans_clusters")
        logging.info(
            "pseudo-labels (%s): %d images in %d clusters of sizes %s",
            ", ".join(f"{k} {v}" for k, v in source.items()),
            len(labels),
            cfg.kmeans_clusters,
            np.bincount(labels, minlength=cfg.kmeans_clusters).tolist(),
        )
        self.pseudo = {"labels": labels, "source": source}
        train_idx, val_idx = runs.split_indices(split.labels, cfg)
        names = tuple(f"cluster_{i}" for i in range(cfg.kmeans_clusters))
        info = dataclasses.replace(data.info, num_classes=cfg.kmeans_clusters, class_names=names)
        return dataclasses.replace(data, y_train=labels[train_idx], y_val=labels[val_idx], info=info)

    def build(self, cfg: FinetuneConfig, data_info: DatasetInfo) -> runs.Built:
        model = build_classifier(cfg, data_info.num_classes)
        if cfg.head_init == "zeros":  # the RobustSSL benchmark and LPAFT.py load a zero `fc` into the classifier
            for v in model.head.variables:
                v.assign(tf.zeros_like(v))
        if self.info is not None:
            route = pretrained_route(self.info, cfg.pretrained_route, cfg.pretrained)
            restored = restore_pretrained(cfg.pretrained, self.info, model, route, head=cfg.restore_head)
            fresh = sorted({"trunk", "stage4"} - set(restored))
            logging.info(
                "restored %s from the %s export %s%s%s",
                " and ".join(restored),
                self.info.get("task", "?"),
                cfg.pretrained,
                f" (its {route} BatchNorm route)" if route else "",
                f"; {', '.join(fresh)} starts from random init (not in the export)" if fresh else "",
            )
        else:
            logging.info("no --pretrained: end-to-end training from random init")
        task = FinetuneTask(
            cfg.objective,
            cfg.attack,
            trades_beta=cfg.trades_beta,
            aux_rotation_weight=cfg.aux_rotation_weight,
            feature_dim=cfg.backbone.feature_dim,
        )
        return runs.Built(
            task,
            model,
            trainable_variables(model, cfg.mode) + task.extra_variables(),
            checkpoint_items=task.checkpoint_items(),
            broadcast=task.extra_variables(),
        )

    def started(self, session: runs.Session) -> None:
        cfg, built = session.cfg, session.built
        logging.info(
            "fine-tuning %s (%s, %s): %d of %d variables train, %d steps of %d images (%d per epoch)",
            cfg.backbone.name,
            cfg.mode,
            cfg.objective + (f" + rotation aux {cfg.aux_rotation_weight}" if cfg.aux_rotation_weight else ""),
            len(built.variables),
            len(built.model.variables) + len(built.broadcast),
            session.total_steps,
            cfg.batch_size,
            session.steps_per_epoch,
        )

    def image_fn(self, session: runs.Session):
        cfg, task, model, data = session.cfg, session.built.task, session.built.model, session.data
        if not cfg.adversarial:  # no attack, no pictures
            return None
        probe = {
            "inputs": pipeline.to_float(tf.constant(data.x_val[:8])),
            "labels": tf.constant(data.y_val[:8], tf.int32),
        }

        def image_fn():
            adv = task.craft(model, probe, tf.constant([cfg.seed, 7], tf.int64), False)
            if cfg.aux_rotation_weight:
                adv = adv[: probe["inputs"].shape[0]]
            tf.summary.image(
                "adversarial/clean|adv|perturbation", summaries.adversarial_grid(probe["inputs"], adv, cfg.attack.eps)
            )

        return image_fn

    def train(self, session: runs.Session) -> dict[str, Any]:
        """Trains epoch by epoch; after each epoch end (and the last step) validates and selects, once per point."""
        cfg, strategy, model, data = session.cfg, session.strategy, session.built.model, session.data
        validator = Validator(
            strategy,
            model,
            data.x_val,
            data.y_val,
            batch_size=cfg.val_batch_size,
            attack=cfg.attack,
            steps=cfg.val_attack_steps,
            seed=cfg.seed + 1,
            quiet=cfg.runtime.quiet,
        )
        selection = self._selection(cfg, data.info)
        val_seconds = 0.0
        for point in validation_steps(session.total_steps, session.steps_per_epoch):
            if point > session.step:
                session.train_to(point)
            if point != session.step or cluster.chief_decides(strategy, selection.validated(point)):
                continue
            t0 = time.perf_counter()
            with loop.SignalGuard() as guard:
                stop = cluster.AgreedSignal(strategy, guard)  # every worker stops at the same batch
                metrics = validator(should_stop=stop.check)
                if metrics is None:  # the checkpoint of this step exists: a re-run validates it again
                    raise loop.Interrupted(stop.signum, point)
                logging.info(
                    "validation at epoch %.2f (step %d): clean accuracy %.4f, PGD-%d robust accuracy %.4f",
                    point / session.steps_per_epoch,
                    point,
                    metrics["clean_accuracy"],
                    cfg.val_attack_steps,
                    metrics["robust_accuracy"],
                )
                selection.record(model, {"step": point, "epoch": round(point / session.steps_per_epoch, 4), **metrics})
            val_seconds += time.perf_counter() - t0
            if stop.check():
                raise loop.Interrupted(stop.signum, point)
        return {"selection": selection, "validation_seconds": val_seconds}

    def _selection(self, cfg: FinetuneConfig, data_info: DatasetInfo) -> ModelSelection:
        """The model selection over this run's validations, with what every classifier export records."""
        info = self.info
        base_info = {
            "version": 1,
            "backbone": to_dict(cfg.backbone),
            "num_classes": data_info.num_classes,
            "data": {**data_info.to_dict(), "class_names": list(data_info.class_names)},
            "pretrained": (
                {
                    "path": cfg.pretrained,
                    "task": info.get("task"),
                    "route": pretrained_route(info, cfg.pretrained_route, cfg.pretrained),
                }
                if info
                else None
            ),
            "config": to_dict(cfg),
            "versions": versions(),
        }
        attack_info = {"name": "pgd_linf", "eps": cfg.attack.eps, "step_size": cfg.attack.step_size}
        return ModelSelection(
            workspace.path(cfg.model_dir, workspace.EXPORT),
            base_info,
            {**attack_info, "steps": cfg.val_attack_steps},
            tf.summary.create_file_writer(workspace.path(cfg.model_dir, workspace.TENSORBOARD, "validation")),
        )

    def finish(self, session: runs.Session, trained: dict[str, Any]) -> dict[str, Any]:
        cfg, steps_per_epoch = session.cfg, session.steps_per_epoch
        results = {
            "mode": cfg.mode,
            "objective": cfg.objective,
            "backbone": cfg.backbone.name,
            "pretrained": cfg.pretrained,
            "steps": session.total_steps,
            "epochs": round(session.total_steps / steps_per_epoch, 4),
            **trained["selection"].summary(),
        }
        results.update(
            wall_time_sec=time.time() - session.start_time,
            train_time_sec_this_session=session.train_seconds,
            train_steps_this_session=session.trained_steps,
            sec_per_epoch_train=(
                session.train_seconds / session.trained_steps * steps_per_epoch if session.trained_steps else None
            ),
            validation_time_sec_this_session=trained["validation_seconds"],
            num_train_examples=len(session.data.x_train),
            num_validation_examples=len(session.data.x_val),
            data=session.data.info.to_dict(),
            versions=versions(),
        )
        if self.pseudo is not None:
            results["pseudo_labels"] = self._export_pseudo_labelled(session)
        return results

    def _export_pseudo_labelled(self, session: runs.Session) -> dict[str, Any]:
        """A run on pseudo-labels never read a label: like pretraining, it writes `export/pretrain` (trunk, stage 4
        and its cluster head, `features`, and the labels it trained on as an asset), which `--pretrained` takes.

        Returns:
          Where they are and what the labels came from (results.json's `pseudo_labels`).
        """
        cfg, model, data_info = session.cfg, session.built.model, session.data.info
        step = {
            "mode": cfg.mode,
            "objective": cfg.objective,
            "steps": session.step,
            "pseudo_labels": self.pseudo["source"],
        }
        export_dir = workspace.path(cfg.model_dir, workspace.EXPORT, "pretrain")
        export.save(
            export_dir,
            {"trunk": model.trunk, "stage4": model.stage4, "head": model.head},
            {"features": lambda images: {"features": model.features(images, training=False)}},
            info={
                "format": PRETRAIN_FORMAT,
                "version": 1,
                "task": self.info.get("task"),
                "parts": ["trunk", "stage4", "head"],
                "backbone": to_dict(cfg.backbone),
                "feature_dim": cfg.backbone.feature_dim,
                "trunk_channels": cfg.backbone.trunk_channels,
                "data": data_info.to_dict(),
                "post_processing": [*self.info.get("post_processing", []), step],
                "config": to_dict(cfg),
                "versions": versions(),
            },
            assets=pseudo_labels.labels_asset(self.pseudo["labels"]),
            image_shape=data_info.image_shape,
        )
        return {"source": self.pseudo["source"], "export": export_dir}


def build_classifier(cfg: FinetuneConfig, num_classes: int) -> ImageClassifier:
    """The run's classifier, with the parts its mode freezes marked (they run with inference-mode BatchNorm)."""
    model = ImageClassifier(cfg.backbone, num_classes, name="classifier")
    model.frozen_parts = frozenset(FROZEN_PARTS[cfg.mode])
    return model
