from __future__ import annotations

import numpy as np
import pytest

from tumor_classifier.models import PRESETS, build_model


def test_seed_preset_is_the_original_architecture() -> None:
    model = build_model("seed", (128, 128, 1), 3)
    assert model.count_params() == 1_629_443
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D",
                     "MaxPooling2D", "Flatten", "Dropout", "Dense", "Dense"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_outputs_probabilities(name: str) -> None:
    model = build_model(name, (64, 64, 1), 3)
    output = np.asarray(model(np.random.default_rng(0).random((2, 64, 64, 1), np.float32)))
    assert output.shape == (2, 3)
    np.testing.assert_allclose(output.sum(axis=1), 1.0, atol=1e-5)


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="Unknown model preset 'vgg'; choose one of seed"):
        build_model("vgg", (64, 64, 1), 3)
