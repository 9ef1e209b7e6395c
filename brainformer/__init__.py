"""brainformer: a transformer that predicts 306-channel MEG from EEG.

Importing the package registers the model with the transformers Auto classes, so a model
directory loads with `AutoConfig.from_pretrained(dir)` / `AutoModel.from_pretrained(dir)` and no
`trust_remote_code`.
"""

from transformers import AutoConfig, AutoModel

from brainformer.configuration_brainformer import BrainformerConfig
from brainformer.modeling_brainformer import (
    BrainformerForMEGPrediction,
    BrainformerForMEGTokens,
    BrainformerMEGPredictionOutput,
    BrainformerMEGTokensOutput,
    BrainformerModel,
    BrainformerModelOutput,
    BrainformerPreTrainedModel,
)
from brainformer.model_dir import DEFAULT_MODEL_DIR, ModelDirError, load_model, resolve_model_dir
from brainformer.quantization import MEGQuantizer

AutoConfig.register(BrainformerConfig.model_type, BrainformerConfig, exist_ok=True)
AutoModel.register(BrainformerConfig, BrainformerModel, exist_ok=True)

__all__ = [
    "BrainformerConfig",
    "BrainformerForMEGPrediction",
    "BrainformerForMEGTokens",
    "BrainformerMEGPredictionOutput",
    "BrainformerMEGTokensOutput",
    "BrainformerModel",
    "BrainformerModelOutput",
    "BrainformerPreTrainedModel",
    "DEFAULT_MODEL_DIR",
    "MEGQuantizer",
    "ModelDirError",
    "load_model",
    "resolve_model_dir",
]
