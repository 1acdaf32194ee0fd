"""A logger that cannot start (its package missing, its store refusing) is one paragraph led by the logger's own
message and what to do, not jsonargparse's union text ("Expected a <class 'bool'>")."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import user_error


@pytest.mark.parametrize("logger,package", [("WandbLogger", "wandb"), ("MLFlowLogger", "mlflow")])
def test_a_logger_that_cannot_start_is_one_paragraph_led_by_its_own_message(cli, run_yaml, logger, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here: {logger} starts")
    result = cli("fit", "--config", run_yaml(), "--trainer.logger", logger)
    message = user_error(result, f"the logger {logger}", "could not start", package, "--trainer.logger")
    assert "Expected a <class" not in message and "Union subtypes" not in message, message
    assert message.index("could not start") < message.index(package), message
    assert message.strip().count("\n") <= 1, message  # the paragraph + the traceback hint
