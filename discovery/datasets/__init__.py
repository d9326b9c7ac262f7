"""Training-set builder: charge-balanced compositions x (prototypes + pyxtal random structures),
relaxed with CHGNet through the project's executors, written as a CDVAE-format CSV with a manifest.

`config.DatasetConfig` (YAML), `builder.build_dataset`, `cli` (``discovery dataset build``).
This package sits beside the campaign (it drives an executor); nothing below it imports it.
"""
