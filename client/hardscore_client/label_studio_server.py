"""``hardscore label-studio``: a Label Studio ML backend over HTTP (aiohttp), scoring through a
hardscore server.

Routes (Label Studio's ML backend API): ``GET /health`` and ``GET /`` (liveness, answered at
once: Label Studio waits 1 s), ``POST /setup`` (checks the label config, returns the model
version; Label Studio waits 3 s), ``POST /predict`` (tasks in, one list of predictions per task
out; Label Studio waits 100 s by default), ``POST /webhook`` (Label Studio's events; annotation
events refresh that task's label-QA prediction), ``GET /versions``; and its own ``POST
/rescore`` (``{"project": ID}``: every annotated task's label-QA prediction scored again and
replaced, as ``hardscore label-studio rescore`` does).

Images are fetched from Label Studio (``/data/upload/...``, ``/data/local-files/?d=...``, any
path on its host) with the API key the backend is given, or from other http(s) URLs without it;
at most ``fetch_concurrency`` at a time, ``max_image_bytes`` each, ``batch_size`` tasks in memory
at once, and all of a request within ``predict_deadline`` seconds.

With ``basic_auth_user`` and ``basic_auth_password`` set, every route but the liveness ones
(``/``, ``/health``) asks for HTTP basic auth: the credentials Label Studio sends when the
backend is connected with "Basic auth" (its ``auth_method`` ``BASIC_AUTH``).

``model_name`` and ``model_version`` pick a model of a server with several (a model
repository). The name is resolved once at start-up (empty: the only model loaded). A version
given is named in every call; without one the backend follows the server's highest loaded
version through swaps, and each prediction's ``model_version``
(``hardscore-<model>-v<version>-<score>``) names the version that computed it, from the
server's reply.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import logging
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from hardscore_client.client import AsyncScoringClient
from hardscore_client.label_studio import (
    QA_SUFFIX,
    SCORE_CHOICES,
    ChoicesControl,
    LabelConfigError,
    class_labels,
    image_ref,
    parse_label_config,
    resolve_image_url,
    task_predictions,
)

log = logging.getLogger("hardscore.label_studio")

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
BASIC_AUTH_PASSWORD_ENV = "HARDSCORE_LABEL_STUDIO_PASSWORD"
URL_ENV = "LABEL_STUDIO_URL"
ACCESS_TOKEN_LIFETIME_S = 240.0  # refresh personal-access-token JWTs this often (LS: 5 min)


@dataclass(frozen=True)
class BackendSettings:
    """What ``hardscore label-studio`` is told.

    ``score``: which score a prediction carries (see SCORE_CHOICES). ``qa``: add the label-QA
    prediction to annotated tasks. ``label_studio_url``: base URL images and the API are
    reached at (default: the hostname Label Studio sends in /setup). ``api_key``: a Label Studio
    personal access token (a JWT refresh token, exchanged for short-lived access tokens) or a
    legacy token. ``basic_auth_user``/``basic_auth_password``: the HTTP basic-auth credentials
    Label Studio must send (both or neither). Sizes in bytes, times in seconds.
    """

    score: str = "hardness"
    qa: bool = True
    label_studio_url: str | None = None
    api_key: str | None = None
    batch_size: int = 64
    fetch_concurrency: int = 8
    max_image_bytes: int = 8 * 1024 * 1024
    fetch_timeout: float = 20.0
    predict_deadline: float = 90.0
    max_request_bytes: int = 64 * 1024 * 1024
    basic_auth_user: str | None = None
    basic_auth_password: str | None = field(default=None, repr=False)
    model_name: str = ""
    model_version: str = ""

    def __post_init__(self) -> None:
        if bool(self.basic_auth_user) != bool(self.basic_auth_password):
            raise ValueError("basic auth needs both a user and a password (the password from "
                             f"the environment variable {BASIC_AUTH_PASSWORD_ENV})")
        if self.basic_auth_user and ":" in self.basic_auth_user:
            raise ValueError("the basic-auth user must not contain ':'")
        if self.score not in SCORE_CHOICES:
            raise ValueError(f"score must be one of {', '.join(SCORE_CHOICES)}, got {self.score!r}")
        for name in ("batch_size", "fetch_concurrency", "max_image_bytes", "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        for name in ("fetch_timeout", "predict_deadline"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")


class FetchError(Exception):
    """One task's image could not be fetched (the task gets no prediction)."""


class _LabelStudioAuth:
    """The Authorization header for Label Studio: ``Bearer <access>`` from a personal access
    token (refreshed at /api/token/refresh/), or ``Token <key>`` for a legacy key."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key or ""
        self._jwt = self._key.count(".") == 2
        self._access: str | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def header(self, session: aiohttp.ClientSession, base: str,
                     force: bool = False) -> dict[str, str]:
        if not self._key:
            return {}
        if not self._jwt:
            return {"Authorization": f"Token {self._key}"}
        async with self._lock:
            if force or self._access is None or time.monotonic() - self._at > \
                    ACCESS_TOKEN_LIFETIME_S:
                url = urllib.parse.urljoin(base + "/", "api/token/refresh/")
                async with session.post(url, json={"refresh": self._key}) as resp:
                    if resp.status != 200:
                        raise FetchError(f"Label Studio refused the API key at {url}: HTTP "
                                         f"{resp.status}")
                    self._access = str((await resp.json())["access"])
                    self._at = time.monotonic()
            return {"Authorization": f"Bearer {self._access}"}


class Backend:
    """The ML backend's state: settings, the hardscore client, the model's class names."""

    def __init__(self, settings: BackendSettings, client: AsyncScoringClient) -> None:
        self.settings = settings
        self.client = client
        self.class_names: list[str] = []
        self.model_version = ""
        """The Label Studio model version of the latest predictions (start: the version the
        server resolved then): hardscore-<model>-v<version>-<score>."""
        self.model_name = ""
        self.served_version = ""
        self._hostname: str | None = None
        self._auth = _LabelStudioAuth(settings.api_key)
        self._session: aiohttp.ClientSession | None = None
        self._fetch_slots = asyncio.Semaphore(settings.fetch_concurrency)
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Reads the served model (class names, name, version) and opens the HTTP session."""
        info = await self.client.get_model_info(self.settings.model_name,
                                                self.settings.model_version)
        self.class_names = list(info.class_names)
        self.model_name, self.served_version = info.name, info.version
        self.model_version = self.tag(info.name, info.version)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.fetch_timeout))

    def tag(self, name: str, version: str) -> str:
        """The Label Studio model version of predictions computed by model ``name`` at
        ``version`` (a server that does not tag its replies: the one resolved at start)."""
        return (f"hardscore-{name or self.model_name}-v{version or self.served_version}-"
                f"{self.settings.score}")

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._session is not None:
            await self._session.close()
        await self.client.close()

    def pin_hostname(self, hostname: str) -> str | None:
        """Takes Label Studio's URL from the first /setup that names one (when
        ``label_studio_url`` is not set); the API key goes only there. A later /setup naming
        another host is refused: its message, else None."""
        hostname = hostname.rstrip("/")
        if self._hostname is None:
            self._hostname = hostname
            log.warning("Label Studio is at %s (from its /setup): images there are fetched "
                        "with the API key; pass --label-studio-url to fix it instead", hostname)
            return None
        if hostname != self._hostname:
            return (f"this backend serves the Label Studio at {self._hostname} (its first "
                    f"/setup); a /setup naming {hostname[:200]!r} is refused: the API key goes "
                    "only to that host (restart the backend, or pass --label-studio-url)")
        return None

    @property
    def base_url(self) -> str:
        base = self.settings.label_studio_url or self._hostname
        if not base:
            raise FetchError("no Label Studio URL: pass --label-studio-url (or "
                             f"{URL_ENV}); Label Studio's /setup sent no hostname")
        return base.rstrip("/")

    def control(self, label_config: str) -> ChoicesControl:
        control = parse_label_config(label_config)
        if not any(name in self.class_names for name in control.class_of_choice.values()):
            raise LabelConfigError(
                f"none of the choices of <Choices name={control.from_name!r}> "
                f"({', '.join(control.choices[:10])}) is a class of the served model "
                f"({', '.join(self.class_names[:10])}); use the class names as values or aliases")
        return control

    # -- images ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str, bool]:
        """(URL, whether it is on Label Studio's host and gets the API key) of a reference."""
        try:
            return resolve_image_url(ref, self.settings.label_studio_url or self._hostname)
        except ValueError as exc:
            raise FetchError(str(exc)) from None

    async def fetch(self, ref: str) -> bytes:
        """The bytes of one image, at most ``max_image_bytes``."""
        limit = self.settings.max_image_bytes
        if ref.startswith("data:"):
            _, _, payload = ref.partition(",")
            if len(payload) > limit * 4 // 3 + 4:
                raise FetchError(f"data URI larger than {limit} bytes")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FetchError(f"data URI is not base64: {exc}") from None
        url, with_key = self.resolve(ref)
        assert self._session is not None
        async with self._fetch_slots:
            for attempt in (0, 1):
                headers = (await self._auth.header(self._session, self.base_url, attempt == 1)
                           if with_key else {})
                try:
                    async with self._session.get(url, headers=headers) as resp:
                        if resp.status == 401 and with_key and attempt == 0:
                            continue  # an expired access token: refresh once
                        if resp.status != 200:
                            raise FetchError(f"GET {url}: HTTP {resp.status}")
                        if (resp.content_length or 0) > limit:
                            raise FetchError(f"GET {url}: {resp.content_length} bytes, over "
                                             f"the {limit}-byte limit")
                        body = bytearray()
                        async for block in resp.content.iter_chunked(64 * 1024):
                            body += block
                            if len(body) > limit:
                                raise FetchError(f"GET {url}: over the {limit}-byte limit")
                        return bytes(body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        raise FetchError(f"GET {url}: HTTP 401 after refreshing the access token")

    # -- predictions ----------------------------------------------------------------------

    async def predict(self, tasks: Sequence[Mapping[str, Any]], label_config: str,
                      deadline: float) -> list[list[dict[str, Any]]]:
        """One list of predictions per task, in order (empty for a task that failed)."""
        control = self.control(label_config)
        labels = class_labels(tasks, control, self.class_names)
        out: list[list[dict[str, Any]]] = [[] for _ in tasks]
        step = self.settings.batch_size
        fetch_s = score_s = 0.0
        scored = 0
        for start in range(0, len(tasks), step):
            chunk = range(start, min(start + step, len(tasks)))
            t0 = time.monotonic()
            images = await asyncio.gather(
                *(self._task_image(tasks[i], control) for i in chunk))
            t1 = time.monotonic()
            fetch_s += t1 - t0
            ok = [i for i, img in zip(chunk, images, strict=True) if img is not None]
            if not ok:
                continue
            if deadline - t1 <= 0:
                raise TimeoutError("the predict deadline passed while fetching images")
            result = await self.client.score_images(
                [images[i - start] for i in ok],  # type: ignore[misc]
                [labels[i] for i in ok] if self.settings.qa else None,
                ids=[str(tasks[i].get("id", "")) for i in ok],
                model_name=self.model_name, model_version=self.settings.model_version,
            )
            for error in result.errors:
                log.warning("task %s not scored: %s: %s", tasks[ok[error.index]].get("id"),
                            error.reason, error.message)
            score_s += time.monotonic() - t1
            scored += len(ok)
            names, versions = result.row_models()  # the version that computed each row
            for row, i in enumerate(ok):
                out[i] = task_predictions(result, row, control,
                                          self.tag(names[row], versions[row]),
                                          self.settings.score, self.settings.qa)
            if result.computed_by:  # a swap on the server: its classes are the reply's
                self.model_version = self.tag(names[-1], versions[-1])
                self.class_names = result.class_names or self.class_names
        log.info("predict: %d tasks, %d images scored, fetching %.2f s, scoring %.2f s",
                 len(tasks), scored, fetch_s, score_s)
        return out

    async def _task_image(self, task: Mapping[str, Any], control: ChoicesControl) -> bytes | None:
        try:
            return await self.fetch(image_ref(task, control))
        except (FetchError, ValueError) as exc:
            log.warning("task %s: no image: %s", task.get("id"), exc)
            return None

    # -- label QA after annotating ----------------------------------------------------------

    def on_annotation(self, task: Mapping[str, Any], label_config: str) -> None:
        """Scores an annotated task again in the background and replaces its QA prediction."""
        job = asyncio.get_running_loop().create_task(self._refresh_qa(task, label_config))
        self._background.add(job)
        job.add_done_callback(self._background.discard)

    async def _refresh_qa(self, task: Mapping[str, Any], label_config: str) -> None:
        try:
            deadline = time.monotonic() + self.settings.predict_deadline
            [predictions] = await self.predict([task], label_config, deadline)
            qa = [p for p in predictions if p["model_version"].endswith(QA_SUFFIX)]
            if not qa:
                return
            await self._replace_prediction(int(task["id"]), qa[0])
        except Exception:  # a background job: log, never raise into the loop
            log.exception("label QA refresh of task %s failed", task.get("id"))

    # -- rescoring a project ----------------------------------------------------------------

    async def _api_get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``path`` of Label Studio's API as JSON, with the API key (refreshed once on 401)."""
        assert self._session is not None
        base = self.base_url
        url = f"{base}{path}"
        for attempt in (0, 1):
            headers = await self._auth.header(self._session, base, attempt == 1)
            try:
                async with self._session.get(
                        url, params=params, headers=headers,
                        timeout=aiohttp.ClientTimeout(total=self.settings.predict_deadline),
                ) as resp:
                    if resp.status == 401 and attempt == 0 and self.settings.api_key:
                        continue
                    if resp.status != 200:
                        hint = (f" (set {API_KEY_ENV} to a Label Studio access token)"
                                if resp.status in (401, 403) else "")
                        raise FetchError(f"GET {url}: HTTP {resp.status}{hint}")
                    return await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise FetchError(f"GET {url}: {type(exc).__name__}: {exc}") from None
        raise FetchError(f"GET {url}: HTTP 401 after refreshing the access token")

    async def rescore(self, project: int) -> dict[str, int]:
        """Scores every annotated task of ``project`` again and replaces its label-QA
        prediction: for annotations saved while the webhook could not reach the backend (no
        credentials yet, backend down), which Label Studio's "Retrieve Predictions" skips
        because those tasks already have a prediction. Returns the counts: annotated tasks,
        rescored, not scored (no image, or a label that is no class of the model)."""
        if not self.settings.qa:
            raise ValueError("rescoring writes label-QA predictions: run it without --no-qa")
        started = time.monotonic()
        info = await self._api_get(f"/api/projects/{project}/")
        label_config = info.get("label_config") if isinstance(info, dict) else None
        if not isinstance(label_config, str):
            raise FetchError(f"project {project}: Label Studio sent no label config")
        self.control(label_config)  # LabelConfigError when the project does not fit the model
        # Label Studio's JSON export holds exactly the tasks with annotations, with them.
        exported = await self._api_get(f"/api/projects/{project}/export",
                                       {"exportType": "JSON"})
        tasks = [t for t in exported if isinstance(t, dict) and any(
            isinstance(a, dict) and not a.get("was_cancelled")
            for a in t.get("annotations") or [])] if isinstance(exported, list) else []
        rescored = 0
        for start in range(0, len(tasks), self.settings.batch_size):
            chunk = tasks[start:start + self.settings.batch_size]
            deadline = time.monotonic() + self.settings.predict_deadline
            for task, predictions in zip(chunk, await self.predict(chunk, label_config, deadline),
                                         strict=True):
                qa = [p for p in predictions if p["model_version"].endswith(QA_SUFFIX)]
                if qa:
                    await self._replace_prediction(int(task["id"]), qa[0])
                    rescored += 1
        counts = {"project": project, "annotated": len(tasks), "rescored": rescored,
                  "not_scored": len(tasks) - rescored}
        log.info("rescore of project %d: %d annotated tasks, %d label-QA predictions replaced, "
                 "%d not scored, %.1f s", project, len(tasks), rescored, len(tasks) - rescored,
                 time.monotonic() - started)
        return counts

    async def _replace_prediction(self, task_id: int, prediction: dict[str, Any]) -> None:
        assert self._session is not None
        base = self.base_url
        headers = await self._auth.header(self._session, base)
        async with self._session.get(f"{base}/api/predictions/", params={"task": str(task_id)},
                                     headers=headers) as resp:
            resp.raise_for_status()
            old = [p["id"] for p in await resp.json()
                   if p.get("model_version") == prediction["model_version"]]
        for pid in old:
            async with self._session.delete(f"{base}/api/predictions/{pid}/",
                                            headers=headers) as resp:
                resp.raise_for_status()
        async with self._session.post(f"{base}/api/predictions/", headers=headers,
                                      json={"task": task_id, **prediction}) as resp:
            resp.raise_for_status()


# -- HTTP ---------------------------------------------------------------------------------

BACKEND = web.AppKey("backend", Backend)
WEBHOOK_ANNOTATION_EVENTS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "body is not JSON"}',
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text='{"error": "body must be a JSON object"}',
                                 content_type="application/json")
    return body


async def health(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    return web.json_response({"status": "UP", "model_class": "hardscore",
                              "model_version": backend.model_version})


async def setup(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _json_object(request)
    hostname = body.get("hostname")
    if isinstance(hostname, str) and hostname and not backend.settings.label_studio_url:
        refused = backend.pin_hostname(hostname)
        if refused:
            return _error(409, refused)
    schema = body.get("schema")
    if isinstance(schema, str) and schema:
        try:
            backend.control(schema)
        except LabelConfigError as exc:
            return _error(400, str(exc))
    return web.json_response({"model_version": backend.model_version})


async def predict(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    deadline = time.monotonic() + backend.settings.predict_deadline
    body = await _json_object(request)
    tasks = body.get("tasks")
    config = body.get("label_config")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        return _error(400, "tasks must be a list of task objects")
    if not isinstance(config, str):
        return _error(400, "label_config must be the project's label config (XML string)")
    try:
        results = await backend.predict(tasks, config, deadline)
    except LabelConfigError as exc:
        return _error(400, str(exc))
    except FetchError as exc:
        return _error(502, str(exc))
    except TimeoutError as exc:
        return _error(504, f"predictions took longer than {backend.settings.predict_deadline} "
                      f"s: {exc}")
    except Exception as exc:  # grpc errors and the like: the reason, not a stack trace
        log.exception("predict failed")
        return _error(502, f"scoring failed: {type(exc).__name__}: {exc}")
    return web.json_response({"results": results, "model_version": backend.model_version})


async def webhook(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    body = await _json_object(request)
    action = body.get("action")
    task, project = body.get("task"), body.get("project")
    if (backend.settings.qa and action in WEBHOOK_ANNOTATION_EVENTS and isinstance(task, dict)
            and isinstance(project, dict) and isinstance(project.get("label_config"), str)):
        annotation = body.get("annotation")
        if isinstance(annotation, dict) and not task.get("annotations"):
            task = {**task, "annotations": [annotation]}
        backend.on_annotation(task, project["label_config"])
        return web.json_response({"status": "ok", "action": action, "queued": True})
    return web.json_response({"status": "ok", "action": action, "queued": False})


async def rescore(request: web.Request) -> web.Response:
    """``POST /rescore`` ``{"project": ID}``: every annotated task's label-QA prediction
    scored again and replaced (``Backend.rescore``); answers the counts when done."""
    backend = request.app[BACKEND]
    body = await _json_object(request)
    project = body.get("project")
    if isinstance(project, str) and project.isdigit():
        project = int(project)
    if not isinstance(project, int) or isinstance(project, bool) or project < 1:
        return _error(400, "project must be a Label Studio project id (an integer)")
    try:
        return web.json_response(await backend.rescore(project))
    except (LabelConfigError, ValueError) as exc:
        return _error(400, str(exc))
    except FetchError as exc:
        return _error(502, str(exc))
    except aiohttp.ClientResponseError as exc:
        return _error(502, f"Label Studio answered {exc.status} to {exc.request_info.url}")
    except Exception as exc:  # grpc errors and the like: the reason, not a stack trace
        log.exception("rescore failed")
        return _error(502, f"scoring failed: {type(exc).__name__}: {exc}")


async def versions(request: web.Request) -> web.Response:
    return web.json_response({"versions": [request.app[BACKEND].model_version]})


OPEN_PATHS = frozenset({"/", "/health"})
"""Liveness routes, answered without credentials (probes; they reveal only the model version)."""


def _basic_auth(user: str, password: str) -> Any:
    """Middleware: every route outside OPEN_PATHS needs these HTTP basic-auth credentials."""
    expected = f"{user}:{password}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if scheme.lower() != "basic" or not hmac.compare_digest(given, expected):
            if request.path == "/webhook":
                log.warning("a webhook without the right basic-auth credentials was refused: "
                            "give Label Studio's webhook to %s the header 'Authorization: Basic "
                            "<base64 of user:password>'", request.path)
            else:
                log.info("%s %s from %s refused: no or wrong basic-auth credentials",
                         request.method, request.path, request.remote)
            return web.json_response(
                {"error": "basic auth required: connect the backend in Label Studio with "
                          "'Basic auth' and this backend's user and password"},
                status=401, headers={"WWW-Authenticate": 'Basic realm="hardscore"'})
        return await handler(request)

    return check


def make_app(settings: BackendSettings, hardscore_target: str, **client_options: Any,
             ) -> web.Application:
    """The aiohttp application; the hardscore client connects on start-up."""
    middlewares = []
    if settings.basic_auth_user and settings.basic_auth_password:
        middlewares.append(_basic_auth(settings.basic_auth_user, settings.basic_auth_password))
    app = web.Application(client_max_size=settings.max_request_bytes, middlewares=middlewares)

    async def lifecycle(app: web.Application) -> Any:
        backend = Backend(settings, AsyncScoringClient(hardscore_target, **client_options))
        await backend.start()
        app[BACKEND] = backend
        yield
        await backend.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/", health)
    app.router.add_get("/health", health)
    app.router.add_post("/setup", setup)
    app.router.add_post("/predict", predict)
    app.router.add_post("/webhook", webhook)
    app.router.add_get("/versions", versions)
    app.router.add_post("/rescore", rescore)
    return app


async def rescore_project(settings: BackendSettings, project: int, hardscore_target: str,
                          **client_options: Any) -> dict[str, int]:
    """``hardscore label-studio rescore``: ``Backend.rescore`` once, without serving."""
    backend = Backend(settings, AsyncScoringClient(hardscore_target, **client_options))
    try:
        await backend.start()
        return await backend.rescore(project)
    finally:
        await backend.stop()


def serve(settings: BackendSettings, host: str, port: int, hardscore_target: str,
          **client_options: Any) -> None:
    """Runs the backend until interrupted."""
    if not settings.basic_auth_user and not _loopback(host):
        log.warning("listening on %s without basic auth: anyone who reaches the port can run "
                    "predictions; set --basic-auth-user and %s", host, BASIC_AUTH_PASSWORD_ENV)
    app = make_app(settings, hardscore_target, **client_options)
    web.run_app(app, host=host, port=port, print=lambda s: log.warning("%s", s))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
