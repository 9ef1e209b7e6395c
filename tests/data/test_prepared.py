"""brainformer.data.prepared: preprocessing, scaling fitted on the train part, mismatched recordings."""

from __future__ import annotations

import numpy as np
import pytest

from brainformer.config_fields import BrainformerFields
from brainformer.data import PreparedData, prepare_recordings, read_raw, split_parts
from brainformer.preprocessing import PreprocessingError, fit_scaling, preprocess_recording, without_scaling
from tests.data.common import SETTINGS, heavy_modules_after, save_variant


def test_prepare_fits_scaling_on_the_train_part_only(prepared, short_fif):
    rec = prepared.recordings[0]
    n = rec.n_samples
    assert rec.name == "short_raw" and rec.eeg.shape == (n, 60) and rec.meg.shape == (n, 306)
    assert rec.parts == split_parts(n, rec.sfreq_hz, SETTINGS.data)
    train_start, train_stop = rec.parts["train"]
    assert train_start == round(0.5 * rec.sfreq_hz)
    assert train_stop == round(0.75 * 0.8 * n)
    # Statistics are those of the unscaled train part after settling, nothing else.
    raw = read_raw(short_fif)
    plain = preprocess_recording(raw, without_scaling(prepared.config))
    expected = fit_scaling(without_scaling(prepared.config), plain.eeg[train_start:train_stop], plain.meg[train_start:train_stop])
    np.testing.assert_allclose(prepared.config.meg_std, expected.meg_std, rtol=1e-6)
    np.testing.assert_allclose(prepared.config.eeg_mean, expected.eeg_mean, rtol=1e-6, atol=1e-12)
    eeg_train, meg_train = rec.part("train")
    np.testing.assert_allclose(meg_train.std(axis=0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(eeg_train.mean(axis=0), 0.0, atol=1e-3)
    # The continuous arrays are exactly what the streaming preprocessor gives with that config.
    np.testing.assert_array_equal(rec.eeg, preprocess_recording(raw, prepared.config).eeg)
    # A config that already holds statistics (a trained model's) is used as it is.
    again = prepare_recordings([short_fif], SETTINGS, config=prepared.config)
    assert again.config is prepared.config and again.fields == prepared.fields
    np.testing.assert_array_equal(again.recordings[0].meg, rec.meg)


def test_recordings_that_do_not_match_the_first_are_clear_errors(short_fif, work):
    renamed = save_variant(short_fif, work / "renamed_raw.fif", lambda raw: raw.rename_channels({"EEG 005": "EEG 5"}))
    with pytest.raises(PreprocessingError, match=r"renamed_raw\.fif: EEG channels of the model config are missing from the file: EEG 005"):
        prepare_recordings([short_fif, renamed], SETTINGS)
    slower = save_variant(short_fif, work / "resampled_raw.fif", lambda raw: raw.resample(500.0, verbose="error"))
    with pytest.raises(PreprocessingError, match=r"resampled_raw\.fif: input sampling rate 500 Hz .* 600\.615 Hz"):
        prepare_recordings([short_fif, slower], SETTINGS)


def test_prepared_data_holds_fields_and_builds_the_model_config_on_demand(prepared):
    from brainformer.configuration_brainformer import BrainformerConfig

    assert isinstance(prepared.fields, BrainformerFields)
    config = prepared.config
    assert isinstance(config, BrainformerConfig) and prepared.config is config
    assert BrainformerFields.from_config(config) == prepared.fields
    # Assigning a config (a wider model on the same data) replaces the fields too.
    wider = PreparedData(prepared.fields, prepared.data, prepared.recordings)
    wider.config = BrainformerConfig(**(prepared.fields.to_dict() | {"d_model": 16, "n_heads": 2}))
    assert wider.fields.d_model == 16 and wider.fields.eeg_std == prepared.fields.eeg_std
    assert wider.n_windows("train") == prepared.n_windows("train")


def test_the_data_package_never_imports_torch_or_transformers():
    code = (
        "import numpy as np, brainformer.data, brainformer.data.readers, brainformer.data.splits, "
        "brainformer.data.prepared, brainformer.data.dataset_dir, brainformer.data.hf\n"
        "from brainformer.quantization import MEGQuantizer\n"
        "MEGQuantizer().decode(MEGQuantizer().encode(np.zeros(4)))  # the Hugging Face view quantises with numpy"
    )
    assert heavy_modules_after(code) == []
