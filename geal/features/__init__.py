"""The frozen backbone's features of a pool: backbones, extraction, the on-disk store, knowledge-cluster
cache."""
