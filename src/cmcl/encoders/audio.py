"""Built-in audio encoder over real recordings: `logmel`, log-mel band statistics of a WAV/FLAC.

Why it exists: `mfcc_stats` only reads MFCC sequences stored as .npy (the embedded digits
benchmark); corpora of real recordings (ESC-50, Clotho, VGGSound's audio tracks) ship WAV or
FLAC files, and a small, fixed, model-free feature lets them run without any checkpoint.

`logmel` (64 bands, 128-d) or `logmel:<n_mels>` (8..128 bands, 2·n_mels-d): the file is mixed
down to mono and resampled to 16 kHz (scipy's polyphase `resample_poly`), then a power
spectrogram (25 ms Hann window, 512-point FFT, 10 ms hop, centred with reflect padding) goes
through a Slaney mel filterbank over 0-8 kHz (`transformers.audio_utils`, the filterbank the
Whisper and CLAP feature extractors use); the feature is the per-band mean and std over
frames of log10 mel power (floor 1e-10), i.e. bels, which keeps values O(1).
"""

from __future__ import annotations

import numpy as np

from cmcl.encoders import Encoder, register_encoder
from cmcl.encoders.payloads import read_audio

RATE, WINDOW, FFT, HOP, FMAX = 16000, 400, 512, 160, 8000.0


@register_encoder("logmel")
class LogMel(Encoder):
    """Per-band mean and std of a log-mel spectrogram (see module docstring)."""

    modality, dim = "audio", 128
    takes_option = True

    def __init__(self, option: str = "") -> None:
        self.spec = f"logmel:{option}" if option else "logmel"
        if option and not (option.isdigit() and 8 <= int(option) <= 128):
            raise ValueError(f"encoder '{self.spec}': give the number of mel bands, 8..128 "
                             "(a 512-point FFT at 16 kHz leaves bands empty above 128), "
                             "e.g. 'logmel:64'")
        self.n_mels = int(option) if option else 64
        self.dim = 2 * self.n_mels
        self._bank: np.ndarray | None = None

    def filters(self) -> np.ndarray:
        """(FFT // 2 + 1, n_mels) Slaney-normalised mel filterbank, built once."""
        if self._bank is None:
            from transformers.audio_utils import mel_filter_bank, window_function

            self._bank = mel_filter_bank(num_frequency_bins=FFT // 2 + 1,
                                         num_mel_filters=self.n_mels, min_frequency=0.0,
                                         max_frequency=FMAX, sampling_rate=RATE, norm="slaney",
                                         mel_scale="slaney").astype(np.float32)
            self._window = window_function(WINDOW, "hann").astype(np.float32)
        return self._bank

    def features(self, x: np.ndarray) -> np.ndarray:
        """(n_mels, frames) log10 mel power of mono 16 kHz samples."""
        from transformers.audio_utils import spectrogram

        bank = self.filters()
        if len(x) < WINDOW:  # reflect padding needs more than half a window: pad short clips
            x = np.pad(x, (0, WINDOW - len(x)))
        return spectrogram(x, self._window, frame_length=WINDOW, hop_length=HOP, fft_length=FFT,
                           power=2.0, mel_filters=bank, mel_floor=1e-10, log_mel="log10")

    def encode(self, payloads, where):
        out = []
        for p, w in zip(payloads, where, strict=True):
            s = self.features(read_audio(p, w, self.spec, RATE))
            out.append(np.concatenate([s.mean(1), s.std(1)]))
        return np.stack(out).astype(np.float32)
