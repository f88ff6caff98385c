"""The student's server, in one place: started and stopped by the pipeline, handed over between the assets and
SFT, asked for a checkpoint by a name that carries its id, or checked when the user runs it (docs/serving.md).

* :mod:`~orion_assets.serving.handover`: which server answers for which weights, under which name; the
  accelerator handed over to SFT.
* :mod:`~orion_assets.serving.served_weights`: what is asked for (``AskedWeights``), its served name, and the
  directories made to serve it (links, merged weights).
* :mod:`~orion_assets.serving.managed_server`: the server process itself (start, watchdog, sleep, stop).
* :mod:`~orion_assets.serving.vllm_client`: a vLLM(-like) server's model list, runtime LoRA adapters, sleep mode.
* :mod:`~orion_assets.serving.vllm_host`: which vLLM runs it, and its flags for this host.
* :mod:`~orion_assets.serving.user_server`: the check of a server the user runs.

No Dagster here; the layer sits between ``io`` (the resource that asks for an endpoint) and ``export`` (the merged
weights). The LLM layer below finds a managed server by its URL only through
:func:`orion_assets.llm.endpoint.managed_server_at`, which :mod:`~orion_assets.serving.managed_server` feeds.
"""
