"""Shared test set-up: tests import the synthetic-checkpoint helpers as `from tests.fixtures import ...`."""
import torch

torch.manual_seed(0)
