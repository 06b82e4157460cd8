"""The test harness, as pytest plugin modules (registered by tests/conftest.py).

    tools.py      what the machine must have: a missing tool fails under CI=true, skips elsewhere
    fleet.py      the sshd fleets (antnest.testing.SshdFleet), their inventories and ssh_config
                  copies, an ssh-agent, a host that accepts TCP and never answers
    processes.py  finding this test's runners, the leftover guard, bounded waits
    cli.py        `python -m antnest` in a subprocess: at once (run_cli) or in the background
    targets.py    where a job runs: local runners, the fleet over paramiko, the fleet over ssh
    timeouts.py   every test gets a time bound, so nothing can hang the suite

Test modules import helpers from here (``from plugins.fleet import ssh_config_copy``) and take
the fixtures by name; none of them starts sshd, builds a CLI command line or hunts for runner
processes on its own.
"""
