"""spiritlm: interleaved spoken and written language models, trainable end to end.

Stages (one folder each, see README.md):

- ``spiritlm.formats``     token strings and unit dicts (Meta's Spirit LM formats)
- ``spiritlm.audio``       audio loading and validation
- ``spiritlm.corpus``      the synthetic aligned speech-text corpus and manifests
- ``spiritlm.tokenizers``  speech tokenizers: HuBERT units, pitch VQ-VAE, style tokens
- ``spiritlm.vocoder``     unit HiFi-GAN with duration predictor
- ``spiritlm.recipes``     launchers and YAML configs
- ``spiritlm.evals``       few-shot and expressivity evaluations
"""

__version__ = "0.1.0"
