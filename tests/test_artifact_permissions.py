"""The files of model/ are readable by any user: SageMaker may serve them as another user."""

from __future__ import annotations

import stat

from conftest import make_table

from tabtransformer.artifacts import Artifact, load_model, save_artifact
from tabtransformer.model import TabTransformer, TabTransformerConfig
from tabtransformer.preprocessing import TablePreprocessor, TargetEncoder


def test_every_model_file_is_0644_whatever_the_writer_chose(tmp_path):
    table = make_table("binary", n=40)
    features = table.drop(columns="label")
    preprocessor = TablePreprocessor.fit(features, categorical=None)
    target = TargetEncoder.fit(table["label"], task="auto", max_classes=10)
    config = TabTransformerConfig(
        cardinalities=preprocessor.cardinalities,
        n_continuous=len(preprocessor.numeric),
        n_outputs=2,
        dim=8,
        n_blocks=1,
        n_heads=2,
    )
    artifact = Artifact(TabTransformer(config), preprocessor, target, False, {"auc": 0.5})
    model_dir = tmp_path / "model"

    save_artifact(model_dir, artifact, {"n_epochs": 1})

    files = sorted(model_dir.iterdir())
    assert {p.name for p in files} >= {"model.safetensors", "preprocessing.json"}
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {"0o644"}, modes
    assert load_model(model_dir).outputs(features.head(3)).shape == (3, 2)
