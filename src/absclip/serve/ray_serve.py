"""The same API on Ray Serve (``absclip serve --engine ray --replicas N``): Ray balances, batches and scales.

Two deployments: ``AbsclipModel`` (N replicas, each a :class:`Service` with the model loaded once;
``@serve.batch`` collects concurrent requests into ``Service.run_batch``) and ``AbsclipIngress`` (the
same FastAPI app as the local server, images decoded and checked there, answers from the replicas).
"""

from __future__ import annotations

import sys
import time
from typing import Any

from absclip.errors import AbsclipError
from absclip.serve.service import Job

APP_NAME = "absclip"
MODEL_DEPLOYMENT = "AbsclipModel"


def import_serve() -> Any:
    """Return ``ray.serve``, or raise the one-sentence error when the extra is missing."""
    try:
        from ray import serve
    except ImportError as e:
        raise AbsclipError("--engine ray needs Ray Serve: pip install 'absclip[serve-ray]'.") from e
    return serve


class RayBackend:
    """The app's backend on Ray Serve: calls the ``AbsclipModel`` replicas through a deployment handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.info: dict[str, Any] = {}

    async def start(self) -> None:
        self.info = await self.handle.info.remote()

    async def stop(self) -> None:
        pass

    async def classify(self, job: Job) -> list[dict[str, Any]]:
        res = await self.handle.classify.remote(job)
        if isinstance(res, Exception):  # the batch hands errors back as values, one per request
            raise res
        return res

    async def explain(self, job: Job) -> bytes:
        return await self.handle.explain.remote(job)

    def stats(self) -> dict[str, Any]:
        return {}


def build_application(spec: Any, inputs: tuple[Any, Any], *, method: str = "abs", replicas: int = 1,
                      max_batch: int | None = None, max_wait_s: float = 0.005, class_sets: int = 16,
                      cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, **app_options: Any) -> Any:
    """Return the Ray Serve application (not yet running) of a classifier spec and the server's class inputs.

    ``inputs`` is ``(classes, texts)`` as read by the CLI; ``app_options`` go to :func:`create_app`.
    """
    serve = import_serve()
    from absclip.serve.app import create_app, service_info
    from absclip.serve.service import Service

    classes, texts = inputs
    batch = max_batch or spec.batch_size

    @serve.deployment(name=MODEL_DEPLOYMENT, num_replicas=replicas, max_ongoing_requests=max(4 * batch, 16),
                      ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica})
    class AbsclipModel:
        def __init__(self) -> None:
            self.service = Service.build(spec, classes, texts, warm=(method,), class_sets=class_sets,
                                         max_batch=batch)
            self.service.clf.attention  # noqa: B018 - loaded before the first request

        def info(self) -> dict[str, Any]:
            return service_info(self.service, method)

        @serve.batch(max_batch_size=batch, batch_wait_timeout_s=max_wait_s)
        async def classify(self, jobs: list[Job]) -> list[Any]:
            return self.service.run_batch(jobs)  # on the replica's loop: one model call at a time

        async def explain(self, job: Job) -> bytes:
            return self.service.explain_png(job)

    def build_app() -> Any:  # runs on the ingress replica
        handle = serve.get_deployment_handle(MODEL_DEPLOYMENT, app_name=APP_NAME)
        return create_app(RayBackend(handle), **app_options)

    # the ingress decodes and checks uploads and waits on the replicas: it reserves no CPU of its own
    ingress = serve.deployment(serve.ingress(build_app)(), name="AbsclipIngress", ray_actor_options={"num_cpus": 0})
    return ingress.bind(AbsclipModel.bind())


def serve_on_ray(spec: Any, inputs: tuple[Any, Any], *, address: str | None = None, host: str = "127.0.0.1",
                 port: int = 8000, **options: Any) -> None:
    """Run the Ray Serve application on ``host:port`` until interrupted (a new local Ray instance, or ``address``)."""
    serve = import_serve()
    from absclip.engines.ray.session import ray_session

    app = build_application(spec, inputs, **options)
    with ray_session(address):
        serve.start(http_options={"host": host, "port": port})
        serve.run(app, name=APP_NAME, route_prefix="/")
        print(f"absclip: serving on Ray Serve at http://{host}:{port}/ ({options.get('replicas', 1)} model "
              "replicas); Ctrl-C stops it", file=sys.stderr, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()
