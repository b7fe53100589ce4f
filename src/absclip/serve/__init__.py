"""``absclip serve``: zero-shot classification and explanations over HTTP (needs ``absclip[serve]``).

Modules: ``service`` (the model side: class sets, batches, explanation pictures; no web framework),
``batching`` (in-process micro-batching of concurrent requests), ``app`` (the FastAPI application:
routes, errors, API key, upload limit), ``page`` (the web page at ``/``), ``ray_serve`` (the same API
as a Ray Serve deployment). Nothing here is imported by the rest of absclip."""
