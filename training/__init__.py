"""training: the torch side. The video tokenizer (training/tokenizer.py) and its training loop, the token cache
(`magvit3d tokenize`), the masked video transformer and its training loop, sampling and `magvit3d generate`, and the
pieces they share (checkpoints, the training loop's device/DDP/logging helpers, image metrics, LPIPS).

Reads the packed dataset through datagen; never imports blender_scenes or evaluation. See docs/architecture.md.
"""
