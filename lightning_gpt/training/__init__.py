"""The Lightning side of lightning-gpt: ``GPTModule`` (hooks, metrics, optimizer groups, default callbacks) with the
rules beside it (``loss``, ``parallelize``, ``adoption``), the data modules (``TextDataModule``, ``PromptDataModule``),
callbacks, strategy presets, the run folder's rules and atomic checkpoint writing.

Everything below ``lightning_gpt.training`` may import Lightning; the model side (``lightning_gpt.model``,
``.config``, ``.attention``, ``.generation``, ``.io``) and the plain data pieces
(``lightning_gpt.data``) never do (``tests/test_imports.py``).
"""

from lightning_gpt.training.datamodule import TextDataModule
from lightning_gpt.training.module import GPTModule
from lightning_gpt.training.prompts import PromptDataModule

__all__ = ["GPTModule", "PromptDataModule", "TextDataModule"]
