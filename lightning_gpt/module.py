"""Compatibility path: ``GPTModule`` lives in ``lightning_gpt.training.module`` (the Lightning side of the package).

``lightning_gpt.module`` is the very same module object, so ``from lightning_gpt.module import GPTModule``, YAML
``class_path: lightning_gpt.module.GPTModule`` and patches of its attributes keep working.
"""

import sys

from lightning_gpt.training import module as _module

sys.modules[__name__] = _module
