"""Importers of models trained by other code into advss_tf SavedModels: the paper's PyTorch code and RobustBench.

`formats` holds the table of checkpoint formats (what `python -m advss_tf.import_torch --format` accepts) and the
entry points `load` / `import_checkpoint`; `checkpoint` reads a file (torch.load(weights_only=True)), `slots` places
its tensors and checks that every one is used, `backbone` infers which of our backbones a reference ResNet is; one
module per family of formats: `classifier`, `pretext` (rotation, jigsaw), `selfie`, `ensemble_pretraining`,
`ensembles` (model_ensemble.py, RobustBench), `contrastive` (ACL's, DynACL's and AIR's pretraining checkpoints). A new format is one new module and one entry in `formats.FORMATS`.
"""
