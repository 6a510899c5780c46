"""Training Imagen-style stages on the procedural demo domain (``python -m comfyui_imagen.train``).

`trainer.train` runs one stage (base or SR): min-SNR / P2 / plain loss weighting (`objective`), EMA (`ema`),
checkpoint and exact resume, bf16 autocast, data-parallel with torchrun (`distributed`). `demo_t5` makes the frozen demo
text encoder; `presets` and `config` hold the demo cascade's architectures and run settings. Importing this package
does nothing.
"""
