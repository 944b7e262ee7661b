"""Typed ids of the controller's domain, so a node id cannot be passed where a device id goes."""

from __future__ import annotations

import uuid
from typing import NewType

__all__ = ["DeploymentId", "DeviceId", "NodeId", "new_deployment_id"]

NodeId = NewType("NodeId", str)
DeviceId = NewType("DeviceId", str)
DeploymentId = NewType("DeploymentId", str)


def new_deployment_id() -> DeploymentId:
    """A fresh, short, unique deployment id (``dep-<12 hex>``)."""
    return DeploymentId(f"dep-{uuid.uuid4().hex[:12]}")
