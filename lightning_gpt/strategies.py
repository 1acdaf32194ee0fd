"""Compatibility path: the strategy presets live in ``lightning_gpt.training.strategies``.

``lightning_gpt.strategies`` is the very same module object, so imports, YAML ``class_path``s such as
``lightning_gpt.strategies.FSDP2Strategy`` and patches keep working.
"""

import sys

from lightning_gpt.training import strategies as _strategies

sys.modules[__name__] = _strategies
