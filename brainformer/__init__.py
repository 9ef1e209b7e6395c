"""brainformer: a transformer that predicts 306-channel MEG from EEG."""
