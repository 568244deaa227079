"""The local development cluster behind `scripts/run`: a real control plane, the chart installed in URL mode, and the
webhook and node agents running out of cluster with the identities and settings the chart gives them.

Not part of the installed distribution: it reuses the test harness (tests/support: control plane, simulated host)
and runs from a checkout.

    stack.py   Stack: helm install, ServiceAccount tokens, the processes (webhook, agents), clean stop
    nodes.py   the agent processes: a simulated node (synthetic sysfs + simulated kernel) and this machine in
               discovery-only mode (every sysfs write, module load and chown refused in-process)
    __main__   `python -m devcluster` = `scripts/run`
"""
