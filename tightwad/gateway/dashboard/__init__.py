"""The gateway's dashboard: one web page (``GET /``) showing the routes and speculation, the
playground and, with a controller, the cluster, live.

The page and its charts are the package's own files under ``static/`` (no CDN, nothing fetched
from anywhere but the gateway). :func:`add_routes` mounts it on the gateway app; see
:mod:`~tightwad.gateway.dashboard.site` for the routes and their auth.
"""

from tightwad.gateway.dashboard.site import DASHBOARD, Dashboard, DashboardSettings, add_routes

__all__ = ["DASHBOARD", "Dashboard", "DashboardSettings", "add_routes"]
