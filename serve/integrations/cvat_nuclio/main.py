"""Nuclio handler for CVAT: forwards the SAM interactor's ``{"image": base64}`` to the EdgeSAM Serve app.

Deploy with ``function.yaml`` beside this file (``nuctl deploy --project-name cvat --path . --platform local``);
set ``EDGESAM_URL`` (e.g. ``http://edgesam-host:8000``) and ``EDGESAM_API_KEY``. Keeping CVAT's function name
``pth-facebookresearch-sam-vit-h`` makes CVAT's SAM plugin decode the answer in the browser.
"""
import json
import os
import urllib.error
import urllib.request


def init_context(context):
    context.user_data.url = os.environ.get("EDGESAM_URL", "http://127.0.0.1:8000").rstrip("/") + "/cvat/sam"
    context.user_data.key = os.environ.get("EDGESAM_API_KEY", "")


def handler(context, event):
    body = event.body if isinstance(event.body, (bytes, bytearray)) else json.dumps(event.body).encode()
    headers = {"Content-Type": "application/json"}
    if context.user_data.key:
        headers["X-API-Key"] = context.user_data.key
    req = urllib.request.Request(context.user_data.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:  # pass the server's 4xx (and its {"error": ...}) through
        status, payload = e.code, e.read()
    return context.Response(body=payload.decode(), headers={}, content_type="application/json", status_code=status)
