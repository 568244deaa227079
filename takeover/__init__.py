"""Taking over an installation of upstream harvester/pcidevices without losing a claim or restarting a VM.

`plan` decides from observed objects what to change or why to refuse (pure: it reads policy, never the API);
`command` is `pcidevices-takeover`, which observes the cluster, prints the plan and applies it. The node-side half
(upstream's `vfio-pci/new_id` entries) is `pcidevices-agent takeover` (nodeagent.host.dynids). docs/takeover.md.
"""
