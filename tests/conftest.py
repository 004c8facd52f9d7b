"""Shared test set-up: tests import the synthetic-checkpoint helpers as `from tests.fixtures import ...`.

One intra-op thread: the fast suite's models are tiny (threading costs more than it gains), and bit-equality
tests then compute their reference and their comparison with the same summation order.
"""
import torch

torch.set_num_threads(1)
torch.manual_seed(0)
