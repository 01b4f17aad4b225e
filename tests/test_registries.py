"""Where the code varies, one registry: the names the schema and the artifact rules allow
(`options`, importable without torch) are the names the implementations register."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

from tabtransformer import hyperparameters, options
from tabtransformer.artifacts import CONFIG_RULES
from tabtransformer.model import NUMERIC_VALUE_EMBEDDINGS, TabTransformerConfig
from tabtransformer.pretraining import OBJECTIVES
from tabtransformer.serving import accept, codecs


def choices(name: str) -> tuple:
    return next(h.choices for h in hyperparameters.SCHEMA if h.name == name)


def test_the_artifact_config_rules_cover_exactly_the_network_config_fields():
    assert set(CONFIG_RULES) == {f.name for f in fields(TabTransformerConfig)}


def test_every_pretraining_objective_the_schema_allows_is_registered():
    assert set(OBJECTIVES) == set(options.PRETRAINING_OBJECTIVES)
    assert set(choices("pretrain_objective")) == {"auto", "none", *OBJECTIVES}
    for name, objective in OBJECTIVES.items():
        assert objective.name == name and objective.accuracy_name


def test_every_numeric_embedding_that_makes_tokens_has_a_value_embedding():
    tokens = {name for name, option in options.NUMERIC_EMBEDDINGS.items() if option.tokens}
    assert set(NUMERIC_VALUE_EMBEDDINGS) == tokens
    assert set(choices("numeric_embedding")) == {"auto", *options.NUMERIC_EMBEDDINGS}
    assert set(choices("ensemble_head")) == set(options.ENSEMBLE_HEADS)


def test_every_content_type_has_a_decoder_or_an_encoder():
    assert set(codecs.DECODERS) == set(codecs.DECODABLE)
    assert set(codecs.ENCODERS) == set(accept.RESPONSE_TYPES)


def test_the_schema_options_and_server_settings_import_no_torch():
    code = (
        "import sys; import tabtransformer.hyperparameters, tabtransformer.options, "
        "tabtransformer.serving.settings; print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
