"""``captioner serve``: the FastAPI app (:func:`captioner.serving.server.create_app`), the batching request queue
and the static page."""
