"""HTTP API: ``python -m backend serve [--host H] [--port P] [--token T]`` (FastAPI; OpenAPI page at ``/docs``).

Endpoints (all JSON unless a file is asked for; errors are ``{"error": "<what went wrong and what to do>",
"status": <code>}``):

- ``POST /v1/match``: multipart ``image0``, ``image1`` (JPEG, PNG or HEIC) and optional form fields
  ``features``, ``matcher``, ``tta``, ``estimator``, ``resize``, ``max_keypoints``, ``runtime`` (``torch`` or
  ``onnx``: the matcher on ONNX Runtime) -> the two-view result of
  :meth:`backend.twoview.pair.PairResult.to_dict` (``matches``, ``inliers``, ``model``, ``verdict``,
  ``similarity_percent``, ``geometry``, ``seconds`` ...). One match at a time (models stay loaded between calls).
- ``POST /v1/runs``: multipart ``files`` (photos and/or zips of photos, the app's upload limits and checks) and
  form ``preset`` (``fast``, ``balanced``, ``accurate``) -> ``202 {"run_id", "status_url", "saved", "skipped"}``;
  the run is computed in the background into the same run folders as the app's (``$SFM_RUNS_DIR``), so the app
  opens it too.
  The answer also carries ``owner_secret`` (header ``X-Run-Owner`` on the request: use that secret instead).
- ``GET /v1/runs``: the caller's runs (ids and statuses): those whose owner secret comes in ``X-Run-Owner``
  (several comma-separated); nobody else's runs are listed. ``GET /v1/runs/{id}`` (status, per-stage progress,
  exports ready), ``GET /v1/runs/{id}/poses.csv`` (and ``poses_imc2024.csv``, ``submission.csv``, ``points.ply``,
  ``model.zip``): reading needs the run id only. ``DELETE /v1/runs/{id}``: cancels a working run, then removes its
  folder; only with the run's ``X-Run-Owner`` (403 otherwise, and the run is untouched); a deleted run answers 410.
  ``POST /v1/runs/{id}/resume`` (owner only): go on from the last finished stage after a failure or a cancel. When
  the server starts, it resumes by itself the runs that its last stop (a crash, SIGKILL, a reboot) interrupted.
- ``GET /v1/methods``: extractors, matchers, estimators, presets.

Access: on a loopback address (the default, 127.0.0.1) no token is needed unless one is given; on any other
address a bearer token is required (``Authorization: Bearer <token>``) on every path, ``/docs`` and
``/openapi.json`` included (open ``/docs`` through an SSH tunnel to the loopback address): ``--token`` or, when
absent, one generated and printed once at start. The token is checked before a byte of the body is read, and a
body is counted as it arrives (chunked or not) and refused with 413 past the endpoint's limit. ``/docs`` is served
from the pinned ``fastapi-offline`` package (no CDN). Run ids and export names are checked against fixed
patterns and lists; no text from a request is ever used as a path.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
import shutil
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi_offline import FastAPIOffline

from . import jobs, owners
from .exports import FORMATS
from .io import sessions, uploads
from .utils.memory import release_memory

EXPORTS = {"poses.csv": "text/csv", "poses_imc2024.csv": "text/csv", "submission.csv": "text/csv",
           "points.ply": "application/octet-stream", "model.zip": "application/zip"}
MAX_REQUEST_BYTES = uploads.DEFAULT_LIMITS.max_total_bytes + 64 * 2**20  # a run's photos plus form overhead
MAX_MATCH_BYTES = 2 * uploads.DEFAULT_LIMITS.max_image_bytes + 2**20  # two photos plus form fields
MAX_OTHER_BYTES = 64 * 2**10  # requests that carry no upload
OWNER_HEADER = "x-run-owner"
DOCS_STATIC = "/docs-static"
_MATCH_LOCK = threading.Lock()
_MODELS: dict = {}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _body_limit(method: str, path: str) -> tuple[int, str]:
    """The most bytes a request body may have on ``method path``, and what to tell a client who sends more."""
    if method == "POST" and path == "/v1/runs":
        return MAX_REQUEST_BYTES, f"send at most {uploads.DEFAULT_LIMITS.describe()} per run"
    if method == "POST" and path == "/v1/match":
        mb = uploads.DEFAULT_LIMITS.max_image_bytes // 2**20
        return MAX_MATCH_BYTES, f"send two photos of at most {mb} MB each"
    return MAX_OTHER_BYTES, "this endpoint takes no upload"


def _json_bytes(status: int, message: str) -> bytes:
    import json

    return json.dumps({"error": message, "status": status}).encode()


class _TooLarge(Exception):
    pass


class _Guard:
    """ASGI middleware run before any endpoint reads a byte of the body:

    - the bearer token (when the server has one) is checked on every path but the static files of ``/docs``, so a
      client without it gets 401 at once, whatever it is sending;
    - a body is counted while it is read (declared ``Content-Length`` or ``Transfer-Encoding: chunked`` alike) and
      the request is answered 413 as soon as it passes the endpoint's limit (:func:`_body_limit`); what was spooled
      so far is dropped by the framework.
    """

    def __init__(self, app, token: str | None = None):
        self.app = app
        self.token = token

    async def _reply(self, send, status: int, message: str, extra: list | None = None) -> None:
        body = _json_bytes(status, message)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")] + (extra or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if self.token is not None and not path.startswith(DOCS_STATIC + "/"):
            got = headers.get("authorization", "")
            if not (got.startswith("Bearer ") and secrets.compare_digest(got[7:].strip().encode(),
                                                                         self.token.encode())):
                return await self._reply(send, 401, "missing or wrong bearer token: send 'Authorization: Bearer "
                                                    "<token>' (the token printed when the server started)",
                                         [(b"www-authenticate", b"Bearer")])
        limit, what = _body_limit(scope.get("method", "GET"), path)
        too_large = f"the request is larger than {limit / 2**20:,.0f} MB; {what}"
        try:
            declared = int(headers.get("content-length") or 0)
        except ValueError:
            declared = 0
        if declared > limit:
            return await self._reply(send, 413, too_large)
        seen = 0
        state = {"over": False, "started": False}

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message):
            if state["over"]:  # the endpoint's own error about the cut body is replaced by the 413
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await self._reply(send, 413, too_large)
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            if not state["started"]:
                state["started"] = True
                await self._reply(send, 413, too_large)


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _run_dir(run_id: str) -> Path:
    if jobs.valid_run_id(run_id) and not jobs.run_exists(run_id) and owners.was_deleted(jobs.runs_root(), run_id):
        raise _error(410, f"run {run_id} was deleted by its owner; start a new run with POST /v1/runs")
    if not jobs.valid_run_id(run_id) or not jobs.run_exists(run_id):
        raise _error(404, f"no run {run_id[:80]!r}; list your runs with GET /v1/runs (header X-Run-Owner)")
    return jobs.run_dir_for(run_id)


@contextlib.contextmanager
def _scratch(prefix: str):
    """A private scratch folder under ``<runs root>/.sessions`` (:class:`backend.io.sessions.SessionFolder`),
    removed when the block ends."""
    folder = sessions.SessionFolder(prefix)
    try:
        yield folder.path
    finally:
        folder.remove()


def _read_upload(f: UploadFile, limit: int, what: str) -> bytes:
    data = f.file.read(limit + 1)
    if len(data) > limit:
        raise _error(413, f"{what} is larger than {limit // 2**20} MB; send a smaller photo")
    if not data:
        raise _error(400, f"{what} is empty; send a JPEG, PNG or HEIC photo")
    return data


def _with_option_fields(endpoint) -> None:
    """Give ``endpoint`` (which takes ``**options``) one optional form field per option of
    :data:`backend.options.OPTIONS` but the server's own (``mapping_threads``), typed and described from the table,
    so that FastAPI parses, documents (``/docs``) and hands them over."""
    import inspect

    from .options import OPTIONS

    sig = inspect.signature(endpoint)
    params = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    for o in OPTIONS:
        if o.name == "mapping_threads":
            continue
        text = o.help + (f" ({o.bounds()})" if o.bounds() else "")
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=Annotated[o.type | None, Form(description=text)]))
    endpoint.__signature__ = sig.replace(parameters=params)


# ---- errors: every one as JSON with what to do ---------------------------------------------------------------------

async def _http_error(request: Request, exc: StarletteHTTPException):
    # every HTTP error, ours and the framework's (unknown route 404, wrong method 405, malformed multipart 400)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no endpoint {request.url.path[:80]!r}; the endpoints are listed at /docs"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path[:80]!r}; see /docs for the methods"
    elif exc.status_code == 400 and ("parsing the body" in detail or "multipart" in detail.lower()):
        detail = ("the request body is not valid multipart/form-data; send the photos as form fields "
                  "(see /docs)")
    return JSONResponse({"error": detail, "status": exc.status_code}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))

async def _validation_error(request: Request, exc: RequestValidationError):
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
        parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
    return JSONResponse({"error": "bad request: " + "; ".join(parts) + " (see /docs)", "status": 422},
                        status_code=422)


# ---- the endpoints -------------------------------------------------------------------------------------------------

router = APIRouter()


def owner_secrets(request: Request) -> list[str]:
    """The owner secrets a request holds (header ``X-Run-Owner``, comma-separated; at most 16)."""
    return [s.strip() for s in request.headers.get(OWNER_HEADER, "").split(",") if s.strip()][:16]

@router.get("/v1/methods")
def methods() -> dict:
    """Registered extractors, matchers (and which extractors each accepts), estimators and presets."""
    from .config import PRESETS
    from .features import EXTRACTORS
    from .matchers import MATCHERS, matchers_for
    from .twoview.geometry import ESTIMATORS

    return {"features": {f: matchers_for(f) for f in EXTRACTORS}, "matchers": list(MATCHERS),
            "estimators": list(ESTIMATORS), "presets": list(PRESETS)}

@router.post("/v1/match")
def match(image0: Annotated[UploadFile, File(description="first photo (JPEG, PNG or HEIC)")],
          image1: Annotated[UploadFile, File(description="second photo")],
          features: Annotated[str, Form()] = "aliked-n16", matcher: Annotated[str, Form()] = "lightglue",
          tta: Annotated[bool, Form()] = False, estimator: Annotated[str, Form()] = "poselib",
          resize: Annotated[int, Form(ge=64, le=4096)] = 1024,
          max_keypoints: Annotated[int, Form(ge=16, le=16384)] = 2048,
          similarity: Annotated[bool, Form()] = True,
          runtime: Annotated[Literal["torch", "onnx"], Form(
              description="the matcher's runtime: torch, or onnx (LightGlue / LighterGlue exported to ONNX and run "
                          "by ONNX Runtime on the CPU, all layers; exported on first use)")] = "torch") -> dict:
    """Match two photos and verify their two-view geometry (see ``python -m backend twoview``)."""
    from .io.weights import MissingWeightsError
    from .onnx_export import OnnxRuntimeMissing
    from .twoview.pair import match_prepared, prepare_image

    limit = uploads.DEFAULT_LIMITS.max_image_bytes
    data = [_read_upload(image0, limit, "image0"), _read_upload(image1, limit, "image1")]
    labels = [uploads.sanitize_name(f.filename or f"image{i}") for i, f in enumerate((image0, image1))]
    # the photos stay in a private folder under the runs root (never the system temp folder), removed on return;
    # a server killed mid-request leaves it to remove_stale() at the next start
    with _MATCH_LOCK, _scratch("api-match-") as tmp:
        ims = []
        for i, d in enumerate(data):
            src = Path(tmp) / f"upload{i}"
            src.write_bytes(d)
            try:
                ims.append(prepare_image(src, Path(tmp) / "images", f"image{i}.jpg", labels[i]))
            except (ValueError, OSError) as e:
                raise _error(400, f"image{i} ({labels[i]}) is not a usable photo: {e}") from None
        try:
            res = match_prepared(ims[0], ims[1], features, matcher, resize=resize, max_keypoints=max_keypoints,
                                 tta=tta, estimator=estimator, similarity=similarity, models=_MODELS,
                                 runtime=runtime)
        except (MissingWeightsError, OnnxRuntimeMissing) as e:
            raise _error(503, f"{e}") from None
        except ValueError as e:
            raise _error(400, f"{e}") from None
        finally:
            del ims
            release_memory()  # give the decoded photos and the matcher's buffers back to the system
    return res.to_dict()

def create_run(request: Request,
               files: Annotated[list[UploadFile], File(description="photos and/or zips of photos")],
               preset: Annotated[str, Form()] = "balanced", **options) -> dict:
    """Start a reconstruction of the uploaded photos; poll ``GET /v1/runs/{id}``. Every option of the option table
    (``backend/options.py``; the table in docs/cli.md) but ``mapping_threads`` (the server's) is a form
    field of the same name that overrides the preset; the ``KEY=VALUE`` options of the command line are not. The
    answer carries ``owner_secret``: send it as header ``X-Run-Owner`` to list, cancel or delete your runs (send
    your own secret in that header here to group several runs under one)."""
    held = owner_secrets(request)
    secret = held[0] if held else owners.new_secret()
    if not owners.valid_secret(secret):
        raise _error(400, "X-Run-Owner must be 16-128 letters, digits, '-' or '_' (leave it out to get one)")
    try:
        cfg = jobs.build_config(preset, **options)
    except ValueError as e:
        raise _error(400, f"{e}") from None
    run_id = jobs.new_run_id()
    run_dir = jobs.run_dir_for(run_id)
    owners.set_owner(run_dir, secret)
    res = uploads.save_uploads(((f.filename or "upload", f.file) for f in files), run_dir / "upload")
    if not res.enough():
        shutil.rmtree(run_dir, ignore_errors=True)
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in res.skipped[:10])
        raise _error(400, f"{len(res.saved)} usable photo(s): a reconstruction needs at least two JPEG, PNG or "
                          f"HEIC photos of the same scene ({uploads.DEFAULT_LIMITS.describe()})"
                     + (f". Skipped: {reasons}" if reasons else ""))
    try:
        jobs.start_run(run_dir, run_dir / "upload", cfg)
    except jobs.JobError as e:
        raise _error(409, f"{e}") from None
    return {"run_id": run_id, "status_url": f"/v1/runs/{run_id}", "preset": preset, "saved": res.saved,
            "skipped": res.skipped, "owner_secret": secret}

_with_option_fields(create_run)
router.post("/v1/runs", status_code=202)(create_run)

@router.get("/v1/runs")
def list_runs(request: Request,
              x_run_owner: Annotated[str | None, Header(description="owner secret(s) from POST /v1/runs, "
                                                                    "comma-separated")] = None) -> dict:
    """Your runs (newest first) and their status: the runs whose owner secret you send in ``X-Run-Owner``.
    Nobody else's runs are listed; open a run you were given by its id."""
    root = jobs.runs_root()
    held = owner_secrets(request)
    out = {"runs": [{"run_id": r, "status": jobs.run_state(root / r)["status"]}
                    for r in owners.owned_runs(root, held) if jobs.run_exists(r)]}
    if not held:
        out["note"] = ("send the owner secret returned by POST /v1/runs as header X-Run-Owner to list your runs")
    return out

@router.get("/v1/runs/{run_id}")
def run_status(run_id: str) -> dict:
    """Status, per-stage progress and timings, and the exports ready to download."""
    d = _run_dir(run_id)
    s = jobs.run_state(d)
    rec = s["record"]
    return {"run_id": run_id, "status": s["status"], "error": s["error"], "error_type": s["error_type"],
            "resumable": s["resumable"], "elapsed_seconds": s["elapsed"],
            "queue_position": s["queue_position"],
            "stages": {k: {"status": v["status"], "done": v["done"], "total": v["total"],
                           "message": v["message"], "seconds": v["seconds"], "counts": v["counts"]}
                       for k, v in s["stages"].items()},
            "summary": rec.get("summary", {}),
            "exports": {n: f"/v1/runs/{run_id}/{n}" for n in EXPORTS if (d / n).is_file()},
            "formats": {f: f"/v1/runs/{run_id}/formats/{f}" for f in FORMATS}
            if (d / "sparse" / "0" / "images.bin").is_file() else {}}

@router.get("/v1/runs/{run_id}/{export}")
def run_export(run_id: str, export: str):
    """Download an export: ``poses.csv``, ``poses_imc2024.csv``, ``submission.csv`` (IMC 2025: scenes and
    outliers), ``points.ply`` or ``model.zip``."""
    if export not in EXPORTS:
        raise _error(404, f"no export {export[:80]!r}; choose one of {', '.join(EXPORTS)}")
    d = _run_dir(run_id)
    path = d / export
    if not path.is_file():
        status = jobs.run_state(d)["status"]
        raise _error(404, f"{export} is not ready (run status: {status}); poll GET /v1/runs/{run_id}")
    return FileResponse(path, media_type=EXPORTS[export], filename=f"{run_id}_{export}")

@router.get("/v1/runs/{run_id}/formats/{fmt}")
def run_format(run_id: str, fmt: str, model: Annotated[int, Query(ge=0, le=100000)] = 0):
    """Download the model for another tool, as a zip: ``colmap-text`` (COLMAP's text model and database.db),
    ``nerfstudio`` (transforms.json, images, sparse_pc.ply) or ``undistorted`` (a COLMAP workspace of undistorted
    PINHOLE photos for gsplat, OpenSplat, OpenMVS); ``model``: which model (default 0, the largest scene's). Made on
    the first request (seconds), then served from the run folder."""
    from .errors import InputError
    from .exports import export_zip

    if fmt not in FORMATS:
        raise _error(404, f"no format {fmt[:80]!r}; choose one of {', '.join(FORMATS)}")
    d = _run_dir(run_id)
    try:
        path = export_zip(d, fmt, model)
    except InputError as e:
        raise _error(404, f"{e}; poll GET /v1/runs/{run_id}") from None
    except ValueError as e:
        raise _error(400, f"{e}") from None
    return FileResponse(path, media_type="application/zip", filename=f"{run_id}_{fmt}-{model}.zip")


@router.post("/v1/runs/{run_id}/resume", status_code=202)
def resume_run(run_id: str, request: Request,
               x_run_owner: Annotated[str | None, Header(description="the run's owner secret")] = None) -> dict:
    """Resume a failed, cancelled or interrupted run from its last finished stage (owner only). A server that
    restarts resumes the runs its stop interrupted by itself."""
    d = _run_dir(run_id)
    try:
        owners.require_owner(d, owner_secrets(request), "resume")
        jobs.continue_run(d)
    except owners.NotOwnerError as e:
        raise _error(403, f"{e}") from None
    except jobs.JobError as e:
        raise _error(409, f"{e}") from None
    return {"run_id": run_id, "status_url": f"/v1/runs/{run_id}"}

@router.delete("/v1/runs/{run_id}")
def delete_run(run_id: str, request: Request,
               x_run_owner: Annotated[str | None, Header(description="the run's owner secret")] = None) -> dict:
    """Cancel the run if it is working, then remove its folder. Only its owner may (header ``X-Run-Owner``);
    anyone else gets 403 and the run is untouched."""
    _run_dir(run_id)
    try:
        jobs.delete_run(run_id, owner_secrets(request))
    except owners.NotOwnerError as e:
        raise _error(403, f"{e}") from None
    except jobs.JobError as e:
        raise _error(409, f"{e}") from None
    return {"deleted": run_id}


def create_app(token: str | None = None) -> FastAPI:
    """The FastAPI application; ``token``: the bearer token every ``/v1`` request must carry (None: no check)."""
    # FastAPIOffline: /docs (Swagger UI 5) and /redoc from the pinned fastapi-offline package, so the page works
    # on a server that reaches no CDN
    app = FastAPIOffline(title="SfM Explorer API", version="1", static_url=DOCS_STATIC,
                  description="Two-view matching and reconstruction runs of SfM Explorer. Errors are "
                              '{"error": "...", "status": code} with what to do.')

    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_middleware(_Guard, token=token)
    app.include_router(router)
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, token: str | None = None) -> int:
    """Serve :func:`create_app` with uvicorn until interrupted. Off loopback, a token is required: ``token`` or one
    generated here and printed once (stdout). Returns the exit code."""
    import uvicorn

    if token is not None and not token.strip():
        print("error: --token is empty; give a non-empty token or leave it out", file=sys.stderr)
        return 2
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
        print(f"API token (send 'Authorization: Bearer <token>'; shown once): {token}", flush=True)
    print(f"SfM Explorer API on http://{host}:{port} (OpenAPI page: /docs); runs in {jobs.runs_root()}",
          flush=True)
    app = create_app(token)
    sessions.remove_stale()  # scratch folders of requests a killed server left behind
    resumed = jobs.resume_interrupted()  # runs a crash or SIGKILL of the last server left half done
    if resumed:
        print(f"resumed {len(resumed)} interrupted run(s): {', '.join(resumed)}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0
