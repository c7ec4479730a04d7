"""Attribution core: attention integrated gradients and the head-mask interface (no Lightning)."""
