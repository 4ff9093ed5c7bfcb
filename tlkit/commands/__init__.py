"""CLI command modules. Each defines Click commands and a ``register(cli)`` function that adds them.

Modules here import only click and light tlkit modules at import time; heavy work happens inside commands.
"""

#: Modules whose ``register(cli)`` is called when the CLI is built, in this order.
COMMAND_MODULES: tuple[str, ...] = (
    "tlkit.commands.extract",  # tlkit extract, tlkit cache ...
    "tlkit.commands.train",  # tlkit train, predict, evaluate, demo
    "tlkit.commands.finetune",  # tlkit finetune, lr-find, advise, export
)
