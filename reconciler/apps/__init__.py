"""Application deployments: components rolled out across nodes in order."""
