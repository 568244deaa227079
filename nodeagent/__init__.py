"""The node agent: host discovery, vfio binding, reconcilers and device plugins of one node."""
