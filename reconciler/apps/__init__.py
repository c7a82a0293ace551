"""Application deployments (SPEC section 3): components rolled out across nodes in order."""
