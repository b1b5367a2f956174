"""Image references in labelling-tool tasks -> image bytes, under the configured limits.

Label Studio tasks hold a URL: an http(s) URL the server can reach, a ``data:image/...;base64,`` URI, or a
path relative to Label Studio itself (``/data/upload/...``, ``/data/local-files/?d=...``) fetched from the
configured Label Studio URL with its API token. Anything else (``s3://``, ``gs://``, local paths) is a 422
naming what to do instead. Downloads stream with a byte cap (413 beyond ``limits.max_image_bytes``) and a
timeout; an unreachable URL or a non-200 answer is a 422 (the reference is the client's).
"""
from __future__ import annotations

import asyncio
from urllib.parse import urljoin, urlsplit

from ..codec import RequestError, check_image_bytes, decode_b64_image
from ..config import LimitsSection
from .config import LabelStudioSection

MAX_REDIRECTS = 3


def _download(url: str, headers: dict[str, str], max_bytes: int, timeout_s: float, allowed: list[str]) -> bytes:
    import requests

    host = (urlsplit(url).hostname or "").lower()
    if allowed and host not in {h.lower() for h in allowed}:
        raise RequestError(f"image host {host!r} is not in integrations.label_studio.allowed_hosts", 422)
    session = requests.Session()
    session.max_redirects = MAX_REDIRECTS
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout_s) as r:
            if r.status_code != 200:
                raise RequestError(f"fetching the task image {url[:200]} answered HTTP {r.status_code}", 422)
            if allowed and (urlsplit(r.url).hostname or "").lower() not in {h.lower() for h in allowed}:
                raise RequestError("the task image URL redirected to a host outside allowed_hosts", 422)
            length = r.headers.get("content-length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise RequestError(f"task image is {length} bytes, over the limit of {max_bytes}", 413)
            data = bytearray()
            for chunk in r.iter_content(65536):
                data += chunk
                if len(data) > max_bytes:
                    raise RequestError(f"task image is over the limit of {max_bytes} bytes", 413)
    except requests.RequestException as e:
        raise RequestError(f"could not fetch the task image {url[:200]}: {type(e).__name__}", 422) from None
    finally:
        session.close()
    check_image_bytes(bytes(data), max_bytes)
    return bytes(data)


async def image_bytes(ref: object, limits: LimitsSection, cfg: LabelStudioSection) -> bytes:
    """A task's image reference -> encoded image bytes (not yet decoded: the embedding cache hashes them)."""
    if not isinstance(ref, str) or not ref.strip():
        raise RequestError("the task's image field must be a non-empty string (URL or data URI)", 422)
    ref = ref.strip()
    if ref[:5].lower() == "data:":
        return decode_b64_image(ref, limits.max_image_bytes, field="task image data URI")
    scheme = urlsplit(ref).scheme.lower()
    if scheme in ("http", "https"):
        url, headers = ref, {}
        base = cfg.base_url()
        token = cfg.token()
        if base and token and urlsplit(base).netloc == urlsplit(ref).netloc:
            headers = {"Authorization": f"Token {token}"}  # Label Studio's own media
    elif ref.startswith("/"):
        base = cfg.base_url()
        if base is None:
            raise RequestError(f"task image {ref[:120]!r} is relative to Label Studio: set integrations.label_studio"
                               ".url (or LABEL_STUDIO_URL) and LABEL_STUDIO_API_KEY on the server", 422)
        url = urljoin(base + "/", ref.lstrip("/"))
        token = cfg.token()
        headers = {"Authorization": f"Token {token}"} if token else {}
    else:
        raise RequestError(f"unsupported task image reference {ref[:120]!r}: use an http(s) URL the server can "
                           "reach, a Label Studio-relative /data/... URL, or a data:image/...;base64 URI "
                           "(cloud storage: let Label Studio serve presigned http(s) URLs)", 422)
    if not cfg.fetch_urls:
        raise RequestError("this server does not fetch image URLs (integrations.label_studio.fetch_urls: false); "
                           "send data: URIs", 422)
    return await asyncio.to_thread(_download, url, headers, limits.max_image_bytes, cfg.fetch_timeout_s,
                                   cfg.allowed_hosts)
