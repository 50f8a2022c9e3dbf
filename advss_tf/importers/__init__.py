"""Importers of models trained by other code into advss_tf SavedModels (`reference`: the paper's PyTorch code)."""
