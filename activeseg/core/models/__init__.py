"""The network side: U-Net backbone (unet), output heads with shake-shake (heads), the sampling
interface over single / M-heads / ensemble / MC-dropout variants (probabilistic), training losses
(losses), intensity normalization and self-describing checkpoint folders (checkpoint)."""
