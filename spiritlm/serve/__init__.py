"""``spiritlm serve``: a local server and web page to talk to a trained model.

* :mod:`spiritlm.serve.config`: the request limits and server options (:class:`ServeLimits`).
* :mod:`spiritlm.serve.streaming`: the one place that calls the streaming APIs of the decoder
  (``SpiritLM.stream``) and of the vocoder (``Vocoder.stream``).
* :mod:`spiritlm.serve.engine`: requests -> prompts (speech uploads through the speech tokenizer),
  streamed and non-streamed generation, one at a time with a bounded queue (:class:`Engine`).
* :mod:`spiritlm.serve.app`: the ASGI app (FastAPI): ``/`` the page, ``/api/info``,
  ``/api/generate`` (JSON answer), ``/api/stream`` (server-sent events).
* :mod:`spiritlm.serve.cli`: the ``spiritlm serve`` command (uvicorn).
* ``static/index.html``: the page (no build step).
"""
