"""``python -m lightning_gpt`` is the ``lightning-gpt`` command (``fit | validate | test | predict | generate``)."""

from lightning_gpt.cli import main

if __name__ == "__main__":
    main()
