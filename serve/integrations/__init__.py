"""Labelling-tool backends mounted on the Serve ingress (``serve/app.py`` includes :data:`ROUTERS`):

* ``/label-studio/{health,setup,predict}``: Label Studio's ML backend protocol (:mod:`.label_studio`);
* ``/xanylabeling/{health,v1/models,v1/predict}``: X-AnyLabeling's remote-server protocol (:mod:`.xanylabeling`);
* ``/cvat/sam``: CVAT's SAM interactor contract, ``{"image": b64}`` -> ``{"blob": b64 float32}`` (:mod:`.cvat`).

They call the ingress's embedding cache and the MaskDecoder deployment through :mod:`.common`, under the
same API key, body/image limits and 4xx errors as ``/v1``. Settings: ``integrations`` in the serve config
(:mod:`.config`).
"""
from __future__ import annotations


def routers() -> list:
    """The APIRouters to include in the ingress app (imported here, not at package import: config.py imports
    this package's ``config`` module and must not pull in FastAPI routes)."""
    from .cvat import router as cvat
    from .label_studio import router as label_studio
    from .xanylabeling import router as xanylabeling

    return [label_studio, xanylabeling, cvat]
