"""Recordings → preprocessed continuous arrays → train / validation / test parts → dataset directories.

One module per job, in the order data flows:

- `readers`: find recordings (files, BIDS roots), open them, read their channel layout, and
  derive the model config's fields from a recording;
- `splits`: the parts of a recording (train / validation / test, in time) and their windows;
- `prepared`: preprocess and scale recordings into continuous arrays (`prepare_recordings`);
- `dataset_dir`: write and read prepared dataset directories (`build_dataset`, `write_dataset`,
  `load_prepared_dataset`);
- `hf`: the same windows as a Hugging Face `datasets.Dataset` (`hf_windows`).

Nothing in the package imports torch or transformers: configs are handled as the torch-free
`brainformer.config_fields.BrainformerFields`; `PreparedData.config` and `config_for_recording`
give a `BrainformerConfig` to callers that build a model.
"""

from __future__ import annotations

from brainformer.data.dataset_dir import (
    ARRAYS_DIRNAME,
    CONFIG_FILENAME,
    COPY_CHUNK_SAMPLES,
    DATASET_FORMAT,
    PREPARE_INFO_FILENAME,
    build_dataset,
    check_dataset_target,
    is_prepared_dataset,
    load_prepare_info,
    load_prepared_dataset,
    write_dataset,
)
from brainformer.data.errors import DataError
from brainformer.data.hf import HF_WINDOWS_KEY, hf_windows, load_hf_windows, save_hf_windows
from brainformer.data.prepared import PreparedData, PreparedRecording, prepare_recordings
from brainformer.data.readers import channel_layout, config_for_recording, fields_for_recording, find_recordings, read_raw
from brainformer.data.splits import SPLITS, split_parts, window_index, window_starts

__all__ = [
    "ARRAYS_DIRNAME",
    "CONFIG_FILENAME",
    "COPY_CHUNK_SAMPLES",
    "DATASET_FORMAT",
    "DataError",
    "HF_WINDOWS_KEY",
    "PREPARE_INFO_FILENAME",
    "PreparedData",
    "PreparedRecording",
    "SPLITS",
    "build_dataset",
    "channel_layout",
    "check_dataset_target",
    "config_for_recording",
    "fields_for_recording",
    "find_recordings",
    "hf_windows",
    "is_prepared_dataset",
    "load_hf_windows",
    "load_prepare_info",
    "load_prepared_dataset",
    "prepare_recordings",
    "read_raw",
    "save_hf_windows",
    "split_parts",
    "window_index",
    "window_starts",
    "write_dataset",
]
