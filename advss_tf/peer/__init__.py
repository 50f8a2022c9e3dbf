"""Peers: the same models written for other frameworks, for side-by-side benchmarks and cross-framework tests.

Nothing here is imported by the library; `advss_tf.peer.torch_resnet` needs PyTorch (the `bench` extra).
"""
