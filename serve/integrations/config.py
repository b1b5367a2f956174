"""``integrations`` section of the serve config: how the labelling-tool backends fetch images."""
from __future__ import annotations

import os

from pydantic import Field

from edgesam.config import StrictModel


class LabelStudioSection(StrictModel):
    """Label Studio ML backend settings.

    Tasks name their image by URL. ``fetch_urls`` lets the server download http(s) URLs (bounded by
    ``limits.max_image_bytes`` and ``fetch_timeout_s``), only from ``allowed_hosts`` when that list is not
    empty; ``data:`` URIs always work. Relative URLs (``/data/upload/...``, Label Studio's own uploads) are
    fetched from ``url`` (else ``$LABEL_STUDIO_URL``) with ``Authorization: Token <key>`` (the key from
    ``$<api_key_env>``, default ``LABEL_STUDIO_API_KEY``).
    """

    fetch_urls: bool = True  # download http(s) task image URLs; false: data: URIs only
    allowed_hosts: list[str] = Field(default_factory=list, description="empty: any host")
    fetch_timeout_s: float = Field(10.0, gt=0, le=120)  # per download (connect and read)
    url: str | None = None  # Label Studio's base URL for /data/... task URLs (else $LABEL_STUDIO_URL)
    api_key_env: str = "LABEL_STUDIO_API_KEY"  # env var holding Label Studio's API token for its media
    max_tasks: int = Field(16, ge=1, le=1024)  # tasks per /label-studio/predict request (413 beyond)

    def base_url(self) -> str | None:
        return (self.url or os.environ.get("LABEL_STUDIO_URL") or "").rstrip("/") or None

    def token(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


class IntegrationsSection(StrictModel):
    label_studio: LabelStudioSection = LabelStudioSection()
