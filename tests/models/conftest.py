"""A briefly trained small CNN for the training-time defenses' tests: an untrained network's flat logits
leave EAD nothing to find and make DeepFool's steps ill-conditioned."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from models.rse import MNIST_SMALL, RSEClassifier
from models.train import TrainConfig, train_classifier


@pytest.fixture(scope="session")
def _trained_cnn(mnist_split) -> nn.Module:
    torch.manual_seed(0)
    model = RSEClassifier(MNIST_SMALL, 0.0, 0.0)
    train_classifier(model, mnist_split.train.subset(np.arange(0, 3500, 5)), TrainConfig(epochs=1))
    return model.eval()


@pytest.fixture
def small_cnn(_trained_cnn: nn.Module) -> nn.Module:
    """A fresh copy per test: tests train it or leave gradients on it."""
    return copy.deepcopy(_trained_cnn)
