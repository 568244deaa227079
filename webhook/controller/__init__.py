"""The leader-elected cluster controller (its own Deployment, ServiceAccount and console script
`pcidevices-controller`): IOMMU-group completion and the janitor for claims of vanished nodes.

plan.py decides (pure), apply.py observes and applies, lease.py elects the leader, __main__.py wires it up.
"""
