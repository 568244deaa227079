"""Dynamic Resource Allocation in the agent (docs/dra.md): the devices of its node that claims offer through DRA.

    model       PublishedDevice: one function (or USB device) as the node offers it, with its slice attributes
    slices      the node's ResourceSlices per driver: planned from the published devices (pure), applied through a
                narrow store; zero writes when nothing changed, gone when the last claim goes
    cdi         CDI specs for prepared claims: built (pure) and written atomically into the runtime's CDI folder
    prepare     the last gate (pure): which published devices a claim's allocation gets on this node, refused when
                the claim has no admission record, asks for part of an IOMMU group, adminAccess, or a device this
                node does not publish
    driver      one DRA driver on this node: the published table, NodePrepareResources/NodeUnprepareResources with
                the requester's `use` asked of the API server, and what is prepared for the claims' status

The gRPC side (the kubelet's DRA plugin API and plugin registration) lives in nodeagent.deviceplugin.draplugin.
"""
