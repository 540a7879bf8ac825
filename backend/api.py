"""HTTP API: ``python -m backend serve [--host H] [--port P] [--token T]`` (FastAPI; OpenAPI page at ``/docs``).

Endpoints (all JSON unless a file is asked for; errors are ``{"error": "<what went wrong and what to do>",
"status": <code>}``):

- ``POST /v1/match``: multipart ``image0``, ``image1`` (JPEG, PNG or HEIC) and optional form fields
  ``features``, ``matcher``, ``tta``, ``estimator``, ``resize``, ``max_keypoints`` -> the two-view result of
  :meth:`backend.twoview.pair.PairResult.to_dict` (``matches``, ``inliers``, ``model``, ``verdict``,
  ``similarity_percent``, ``geometry``, ``seconds`` ...). One match at a time (models stay loaded between calls).
- ``POST /v1/runs``: multipart ``files`` (photos and/or zips of photos, the app's upload limits and checks) and
  form ``preset`` (``fast``, ``balanced``, ``accurate``) -> ``202 {"run_id", "status_url", "saved", "skipped"}``;
  the run is computed in the background into the same run folders as the app's (``$SFM_RUNS_DIR``), so the app
  opens it too.
- ``GET /v1/runs`` (ids and statuses), ``GET /v1/runs/{id}`` (status, per-stage progress, exports ready),
  ``GET /v1/runs/{id}/poses.csv`` (and ``poses_imc2024.csv``, ``submission.csv``, ``points.ply``, ``model.zip``),
  ``DELETE /v1/runs/{id}`` (cancels a working run, then removes its folder).
- ``GET /v1/methods``: extractors, matchers, estimators, presets.

Access: on a loopback address (the default, 127.0.0.1) no token is needed unless one is given; on any other
address a bearer token is required (``Authorization: Bearer <token>``): ``--token`` or, when absent, one generated
and printed once at start. Run ids and export names are checked against fixed patterns and lists; no text from a
request is ever used as a path.
"""

from __future__ import annotations

import ipaddress
import secrets
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from . import jobs
from .io import uploads

EXPORTS = {"poses.csv": "text/csv", "poses_imc2024.csv": "text/csv", "submission.csv": "text/csv",
           "points.ply": "application/octet-stream", "model.zip": "application/zip"}
MAX_REQUEST_BYTES = uploads.DEFAULT_LIMITS.max_total_bytes + 64 * 2**20  # a run's photos plus form overhead
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


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _run_dir(run_id: str) -> Path:
    if not jobs.valid_run_id(run_id) or not jobs.run_exists(run_id):
        raise _error(404, f"no run {run_id[:80]!r}; list the runs with GET /v1/runs")
    return jobs.run_dir_for(run_id)


def _read_upload(f: UploadFile, limit: int, what: str) -> bytes:
    data = f.file.read(limit + 1)
    if len(data) > limit:
        raise _error(413, f"{what} is larger than {limit // 2**20} MB; send a smaller photo")
    if not data:
        raise _error(400, f"{what} is empty; send a JPEG, PNG or HEIC photo")
    return data


def create_app(token: str | None = None) -> FastAPI:
    """The FastAPI application; ``token``: the bearer token every ``/v1`` request must carry (None: no check)."""
    app = FastAPI(title="SfM Explorer API", version="1",
                  description="Two-view matching and reconstruction runs of SfM Explorer. Errors are "
                              '{"error": "...", "status": code} with what to do.')

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": str(exc.detail), "status": exc.status_code}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            parts.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else str(e.get("msg", "invalid")))
        return JSONResponse({"error": "bad request: " + "; ".join(parts) + " (see /docs)", "status": 422},
                            status_code=422)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next):
        # a request announcing more than a run's upload limit is refused before its body is read
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            length = 0
        if length > MAX_REQUEST_BYTES:
            return JSONResponse({"error": f"the request is larger than {MAX_REQUEST_BYTES / 2**30:.1f} GB; send at most "
                                          f"{uploads.DEFAULT_LIMITS.describe()}", "status": 413}, status_code=413)
        return await call_next(request)

    def auth(request: Request) -> None:
        if token is None:
            return
        got = request.headers.get("authorization", "")
        if not (got.startswith("Bearer ") and secrets.compare_digest(got[7:].strip().encode(), token.encode())):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <token>' (the "
                                     "token printed when the server started)", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(auth)]

    @app.get("/v1/methods", dependencies=guarded)
    def methods() -> dict:
        """Registered extractors, matchers (and which extractors each accepts), estimators and presets."""
        from .config import PRESETS
        from .features import EXTRACTORS
        from .matchers import MATCHERS, matchers_for
        from .twoview.geometry import ESTIMATORS

        return {"features": {f: matchers_for(f) for f in EXTRACTORS}, "matchers": list(MATCHERS),
                "estimators": list(ESTIMATORS), "presets": list(PRESETS)}

    @app.post("/v1/match", dependencies=guarded)
    def match(image0: Annotated[UploadFile, File(description="first photo (JPEG, PNG or HEIC)")],
              image1: Annotated[UploadFile, File(description="second photo")],
              features: Annotated[str, Form()] = "aliked-n16", matcher: Annotated[str, Form()] = "lightglue",
              tta: Annotated[bool, Form()] = False, estimator: Annotated[str, Form()] = "poselib",
              resize: Annotated[int, Form(ge=64, le=4096)] = 1024,
              max_keypoints: Annotated[int, Form(ge=16, le=16384)] = 2048,
              similarity: Annotated[bool, Form()] = True) -> dict:
        """Match two photos and verify their two-view geometry (see ``python -m backend twoview``)."""
        from .io.weights import MissingWeightsError
        from .twoview.pair import match_prepared, prepare_image

        limit = uploads.DEFAULT_LIMITS.max_image_bytes
        data = [_read_upload(image0, limit, "image0"), _read_upload(image1, limit, "image1")]
        labels = [uploads.sanitize_name(f.filename or f"image{i}") for i, f in enumerate((image0, image1))]
        with tempfile.TemporaryDirectory(prefix="sfm-api-match-") as tmp, _MATCH_LOCK:
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
                                     tta=tta, estimator=estimator, similarity=similarity, models=_MODELS)
            except MissingWeightsError as e:
                raise _error(503, f"{e}") from None
            except ValueError as e:
                raise _error(400, f"{e}") from None
        return res.to_dict()

    @app.post("/v1/runs", status_code=202, dependencies=guarded)
    def create_run(files: Annotated[list[UploadFile], File(description="photos and/or zips of photos")],
                   preset: Annotated[str, Form()] = "balanced") -> dict:
        """Start a reconstruction of the uploaded photos; poll ``GET /v1/runs/{id}``."""
        try:
            cfg = jobs.build_config(preset)
        except ValueError as e:
            raise _error(400, f"{e}") from None
        run_id = jobs.new_run_id()
        run_dir = jobs.run_dir_for(run_id)
        res = uploads.save_uploads(((f.filename or "upload", f.file) for f in files), run_dir / "upload")
        if len(res.saved) < 2:
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
                "skipped": res.skipped}

    @app.get("/v1/runs", dependencies=guarded)
    def list_runs() -> dict:
        """Run ids (newest first) and their status."""
        root = jobs.runs_root()
        ids = sorted((d.name for d in root.iterdir() if d.is_dir() and jobs.run_exists(d.name)), reverse=True) \
            if root.is_dir() else []
        return {"runs": [{"run_id": r, "status": jobs.run_state(root / r)["status"]} for r in ids]}

    @app.get("/v1/runs/{run_id}", dependencies=guarded)
    def run_status(run_id: str) -> dict:
        """Status, per-stage progress and timings, and the exports ready to download."""
        d = _run_dir(run_id)
        s = jobs.run_state(d)
        rec = s["record"]
        return {"run_id": run_id, "status": s["status"], "error": s["error"], "elapsed_seconds": s["elapsed"],
                "queue_position": s["queue_position"],
                "stages": {k: {"status": v["status"], "done": v["done"], "total": v["total"],
                               "message": v["message"], "seconds": v["seconds"], "counts": v["counts"]}
                           for k, v in s["stages"].items()},
                "summary": rec.get("summary", {}),
                "exports": {n: f"/v1/runs/{run_id}/{n}" for n in EXPORTS if (d / n).is_file()}}

    @app.get("/v1/runs/{run_id}/{export}", dependencies=guarded)
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

    @app.delete("/v1/runs/{run_id}", dependencies=guarded)
    def delete_run(run_id: str) -> dict:
        """Cancel the run if it is working, then remove its folder."""
        d = _run_dir(run_id)
        if jobs.cancel(run_id):
            jobs.wait(run_id, timeout=120)
            if jobs.run_state(d)["status"] in ("running", "queued"):
                raise _error(409, "the run is still stopping; try DELETE again in a minute")
        shutil.rmtree(d, ignore_errors=True)
        return {"deleted": run_id}

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
    uvicorn.run(create_app(token), host=host, port=port, log_level="warning")
    return 0
