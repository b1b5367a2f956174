"""EdgeSAM on Ray Serve: FastAPI ingress composing ImageEncoder, MaskDecoder and Everything.

Run from the repository root::

    serve run serve.app:edgesam                       # configs/serve.yaml
    EDGESAM_SERVE_CONFIG=my.yaml serve run serve.app:edgesam
    serve deploy serve/serve_config.yaml              # on a running cluster (ray start --head)

Endpoints: ``POST /v1/embeddings``, ``POST /v1/segment``, ``POST /v1/everything``, ``GET /v1/samples``,
``GET /healthz``, ``GET /`` (web page), OpenAPI at ``/docs``. Every client error is a 4xx with
``{"error": "..."}``. Ray Serve's own metrics (request counts/latencies per deployment, batch sizes,
replica counts) are on Ray's Prometheus endpoint (``ray start --metrics-export-port=8080``, then
``http://<node>:8080/metrics``), plus ``edgesam_embedding_cache_{hits,misses}`` from the ingress.

Every request is checked against a memory budget before any work (``serve.budget``: 413 past
``limits.memory_budget_bytes``); a replica that dies mid-request gives 503, not 500 (``serve.faults``).
"""
# No ``from __future__ import annotations`` here: FastAPI must see real annotations on the ingress methods.

import asyncio
import hmac
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from .budget import check_everything, check_segment
from .cache import CacheEntry
from .codec import RequestError, content_hash, decode_b64_image, decode_image, probe_image
from .config import LimitsSection, ServeAppConfig, load_serve_config
from .faults import add_unavailable_handlers
from .integrations import routers as integration_routers
from .messages import DecodeRequest
from .payloads import (image_body_openapi, read_image_payloads, summarise_errors, validate_mask_input,
                       validate_prompts)
from .preflight import check_resources
from .samples import sample_image, sample_names, sample_png
from .schemas import (EmbeddingResponse, ErrorResponse, EverythingRequest, EverythingResponse, HealthResponse,
                      ImageRequest, SampleInfo, SegmentRequest, SegmentResponse)

STATIC_DIR = Path(__file__).resolve().parent / "static"
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422)}


class ReplicaSettings:
    """Settings of the ingress replica this process hosts (one replica per process), read by the body-size
    middleware and the API-key dependency, which run outside the deployment instance.

    Class attributes on purpose: Serve ships the ingress class by value (cloudpickle), which would copy a
    module-level instance, while this class is pickled by reference and so is shared within the process.
    """

    limits: LimitsSection = LimitsSection()
    api_key: str | None = None
    replica: str = ""  # this ingress replica's id, sent as X-EdgeSAM-Replica (which replica answered)


class PayloadTooLarge(StarletteHTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodyLimitMiddleware:
    """Refuses bodies over ``limits.max_body_bytes``: by Content-Length up front, else while streaming."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = ReplicaSettings.limits.max_body_bytes
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > limit
            except ValueError:
                too_big = False
            if too_big:
                return await JSONResponse({"error": PayloadTooLarge(limit).detail}, 413)(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLarge(limit)
            return message

        async def send_with_replica(message: dict) -> None:
            if message["type"] == "http.response.start" and ReplicaSettings.replica:
                message["headers"] = [*message.get("headers", []), (b"x-edgesam-replica", ReplicaSettings.replica.encode())]
            await send(message)

        await self.app(scope, limited_receive, send_with_replica)


api = FastAPI(
    title="EdgeSAM on Ray Serve",
    version="0.1.0",
    description="Promptable segmentation (points, boxes) and segment-everything with an EdgeSAM student. "
                "Images travel as bytes or base64 only; the /v1 routes never fetch URLs (only the Label Studio "
                "backend does, with size and time limits and an optional host allowlist). "
                "Errors are `{\"error\": ...}`.",
)
api.add_middleware(BodyLimitMiddleware)
for _router in integration_routers():  # Label Studio, X-AnyLabeling, CVAT backends (serve/integrations)
    api.include_router(_router)
add_unavailable_handlers(api)  # a dying replica answers 503, not 500


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


@api.exception_handler(RequestValidationError)
async def _on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, summarise_errors(list(exc.errors())))


@api.exception_handler(StarletteHTTPException)
async def _on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=getattr(exc, "headers", None))


@api.exception_handler(RequestError)
async def _on_request_error(_: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, str(exc))


@api.exception_handler(ValueError)
async def _on_value_error(_: Request, exc: ValueError) -> JSONResponse:
    return _error(422, str(exc))


def require_api_key(x_api_key: Annotated[str | None, Header(description="needed when the server has a key")] = None) -> None:
    """Dependency for /v1 model endpoints; runs before the body is validated."""
    if ReplicaSettings.api_key is None:
        return
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), ReplicaSettings.api_key.encode()):
        raise StarletteHTTPException(401, "missing or wrong X-API-Key header")


def _as_entry(found: dict[str, Any]) -> CacheEntry:
    """``EmbeddingStore`` answer {"ref": [ObjectRef], "original_hw", "input_hw"} -> CacheEntry.

    Defined above the ingress class: Serve pickles that class by value when it is decorated, capturing only
    the module globals that exist at that moment."""
    return CacheEntry(found["ref"][0], tuple(found["original_hw"]), tuple(found["input_hw"]))


@serve.deployment(name="EdgeSamIngress")
@serve.ingress(api)
class EdgeSamIngress:
    """HTTP front: validation, limits and memory budgets, API key, and the web page. Embeddings live in the
    ``EmbeddingStore`` deployment, shared by every ingress replica."""

    def __init__(self, cfg: dict, encoder: DeploymentHandle, decoder: DeploymentHandle,
                 everything: DeploymentHandle, store: DeploymentHandle) -> None:
        self.cfg = ServeAppConfig.model_validate(cfg)
        self.encoder, self.decoder, self.everything_handle, self.store = encoder, decoder, everything, store
        self.limits = self.cfg.limits
        ReplicaSettings.limits = self.limits
        ReplicaSettings.api_key = self.cfg.auth.resolve()
        ReplicaSettings.replica = serve.get_replica_context().replica_id.unique_id
        self._everything_masks: int | None = None  # masks one everything decoder call holds (its replica's mode)
        self._weights: str | None = None  # "checkpoint" | "onnx" | "random", as the encoder replica reports it
        self.page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
        self._health: dict[str, Any] | None = None
        from ray.serve import metrics

        self.hit_counter = metrics.Counter("edgesam_embedding_cache_hits", description="embedding cache hits")
        self.miss_counter = metrics.Counter("edgesam_embedding_cache_misses", description="embedding cache misses")

    # -- pages and metadata -----------------------------------------------------------------------
    @api.get("/", include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self.page)

    @api.get("/healthz", response_model=HealthResponse)
    async def healthz(self) -> dict[str, Any]:
        """Model identity, backends, image size, and whether the weights are random (with a loud warning)."""
        enc, dec, every, cache = await asyncio.gather(self.encoder.info.remote(), self.decoder.info.remote(),
                                                      self.everything_handle.info.remote(), self.store.stats.remote())
        return {"status": "ok", "model": enc["identity"], "weights": enc["weights"], "warning": enc["warning"],
                "backend": {"encoder": enc["backend"], "decoder": dec["backend"], "everything": every["backend"]},
                "img_size": enc["img_size"], "auth": ReplicaSettings.api_key is not None, "cache": cache,
                "batching": {"encoder": {**enc["batching"], **enc["stats"]},
                             "decoder": {**dec["batching"], **dec["stats"], "groups": dec["groups"],
                                         "embeddings": dec["embeddings"]}},
                "everything": every["implementation"]}

    @api.get("/v1/samples", response_model=list[SampleInfo])
    async def samples(self) -> list[dict[str, Any]]:
        """Built-in sample images (scikit-image photos and a synthetic scene) for the web page."""
        out = []
        for name, title in sample_names():
            h, w = sample_image(name).shape[:2]
            out.append({"name": name, "title": title, "width": w, "height": h, "url": f"/v1/samples/{name}"})
        return out

    @api.get("/v1/samples/{name}", responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorResponse}})
    async def sample(self, name: str) -> Response:
        if name not in dict(sample_names()):
            raise RequestError(f"unknown sample {name!r}", 404)
        return Response(await asyncio.to_thread(sample_png, name), media_type="image/png")

    # -- model endpoints --------------------------------------------------------------------------
    async def _weights_kind(self) -> str:
        if self._weights is None:
            self._weights = (await self.encoder.info.remote())["weights"]
        return self._weights

    async def _lookup(self, key: str) -> CacheEntry | None:
        """The store's entry for ``key`` (its ``ref`` an ObjectRef to the embedding), or None."""
        found = await self.store.lookup.remote(key)
        return None if found is None else _as_entry(found)

    async def _embedding_for(self, data: bytes) -> tuple[str, CacheEntry, bool]:
        """Image bytes -> (embedding_id, entry, cached); a miss decodes here and encodes through the store."""
        key = content_hash(data)
        entry = await self._lookup(key)
        cached = entry is not None
        if entry is None:
            import ray

            image = await asyncio.to_thread(decode_image, data, self.limits.max_image_bytes, self.limits.max_pixels)
            found, cached = await self.store.embed.remote(key, [ray.put(image)])
            entry = _as_entry(found)
        (self.hit_counter if cached else self.miss_counter).inc()
        return key, entry, cached

    @staticmethod
    def decode_request(key: str, entry: CacheEntry, **fields: Any) -> DecodeRequest:
        """The decoder message for ``entry``: the embedding travels as its ObjectRef, never as the array."""
        return DecodeRequest(embedding_id=key, embedding=None, embedding_ref=[entry.ref], original_hw=entry.original_hw,
                             input_hw=entry.input_hw, **fields)

    @api.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERRORS,
              openapi_extra=image_body_openapi(ImageRequest), dependencies=[Depends(require_api_key)])
    async def embeddings(self, request: Request) -> dict[str, Any]:
        """Encode an image once; later /v1/segment calls refer to it by ``embedding_id`` (its sha256)."""
        (data,) = await read_image_payloads(request, self.limits, many=False)
        key, entry, cached = await self._embedding_for(data)
        h, w = entry.original_hw
        return {"embedding_id": key, "width": w, "height": h, "cached": cached}

    @api.post("/v1/segment", response_model=SegmentResponse, responses=ERRORS,
              dependencies=[Depends(require_api_key)])
    async def segment(self, req: SegmentRequest) -> dict[str, Any]:
        """Masks for point/box prompts on a cached embedding (or an inline image, encoded and cached).

        Refine a mask SAM-style: ask with ``return_low_res_logits: true``, then send the chosen mask's
        ``low_res_logits`` back as ``mask_input`` with the corrected clicks."""
        if (req.embedding_id is None) == (req.image_b64 is None):
            raise RequestError("give exactly one of embedding_id (from /v1/embeddings) or image_b64", 422)
        data = entry = None
        if req.embedding_id is not None:
            key, entry = req.embedding_id, await self._lookup(req.embedding_id)
            if entry is None:
                raise RequestError(f"unknown embedding_id {key}: it was never computed here or was evicted; "
                                   "POST the image to /v1/embeddings again (or send image_b64)", 404)
            h, w = entry.original_hw
        else:
            data = decode_b64_image(req.image_b64, self.limits.max_image_bytes)
            # header only; the pixel count is all the budget needs (EXIF rotation may swap h and w)
            w, h, _ = probe_image(data, self.limits.max_image_bytes, self.limits.max_pixels)
        check_segment(h, w, len(req.boxes) if req.boxes else 1, req.num_outputs, req.multimask_select,
                      self.limits)  # before any work
        if data is not None:
            key, entry, _ = await self._embedding_for(data)
            h, w = entry.original_hw
        prompts = validate_prompts(req, h, w, self.limits)
        mask = None if req.mask_input is None else validate_mask_input(req.mask_input, self.cfg.model.img_size)
        result = await self.decoder.decode.remote(self.decode_request(
            key, entry, num_outputs=req.num_outputs, select=req.multimask_select, fmt=req.format, mask_input=mask,
            return_low_res_logits=req.return_low_res_logits, **prompts))
        if "error" in result:
            raise RequestError(result["error"], 422)
        return {"embedding_id": key, "width": w, "height": h, "masks": result["masks"],
                "weights": await self._weights_kind()}

    @api.post("/v1/everything", response_model=EverythingResponse, responses=ERRORS,
              openapi_extra=image_body_openapi(EverythingRequest), dependencies=[Depends(require_api_key)])
    async def everything(self, request: Request) -> dict[str, Any]:
        """Segment everything in one image (or ``images_b64``: several) -> COCO-style annotations per image."""
        payloads = await read_image_payloads(request, self.limits, many=True)
        sizes = [probe_image(d, self.limits.max_image_bytes, self.limits.max_pixels)[1::-1] for d in payloads]
        if self._everything_masks is None:
            self._everything_masks = int((await self.everything_handle.info.remote())["masks_in_flight"])
        check_everything(sizes, self._everything_masks, self.limits)  # before decoding a pixel
        images = [await asyncio.to_thread(decode_image, d, self.limits.max_image_bytes, self.limits.max_pixels)
                  for d in payloads]
        results = await self.everything_handle.segment.remote(images)
        return {"results": results, "weights": await self._weights_kind()}


def build_app(cfg: ServeAppConfig) -> Application:
    """The application graph for ``cfg``: ingress -> (EmbeddingStore -> ImageEncoder, MaskDecoder, Everything)."""
    # Imported here, not at module level, so the ingress replica (which imports this module) stays free of
    # torch: it starts faster and holds ~300 MB less.
    from .deployments import Everything, ImageEncoder, MaskDecoder, everything_config
    from .store import EmbeddingStore

    everything_config(cfg, has_rpn=False)  # fail here, not in a replica, on a bad everything.generator
    check_resources(cfg)  # fail here, not by replicas pending forever, when the cluster is too small
    d = cfg.model_dump(mode="json")
    encoder = ImageEncoder.options(**cfg.encoder.options()).bind(d)
    decoder = MaskDecoder.options(**cfg.decoder.options()).bind(d)
    everything = Everything.options(**cfg.everything.options(2)).bind(d)
    # One store replica: it is the shared state (a second would be a second, disjoint cache).
    store = EmbeddingStore.options(num_replicas=1, max_ongoing_requests=1000,
                                   ray_actor_options={"num_cpus": cfg.cache.num_cpus}).bind(cfg.cache.max_embeddings,
                                                                                            encoder)
    return EdgeSamIngress.options(**cfg.ingress.options(64)).bind(d, encoder, decoder, everything, store)


def __getattr__(name: str) -> Application:
    """``serve.app:edgesam`` is built on access, from ``$EDGESAM_SERVE_CONFIG`` or ``configs/serve.yaml``."""
    if name == "edgesam":
        return build_app(load_serve_config())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
