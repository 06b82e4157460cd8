"""The test harness lives in tests/plugins/ (see its __init__ for what each module gives)."""

pytest_plugins = [
    "plugins.tools",
    "plugins.processes",
    "plugins.fleet",
    "plugins.cli",
    "plugins.targets",
    "plugins.timeouts",
]
