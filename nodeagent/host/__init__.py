"""Host-changing side of the node agent: vfio-pci binding and release, in-use checks, IOMMU-group completeness."""
