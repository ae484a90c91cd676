"""The model server: OpenAI-compatible API over a batching engine with multi-LoRA (``dsv serve``).

Layout follows vLLM's entrypoints: ``api`` (thin routers) -> ``serving`` (the logic) -> ``engine``
(the model thread), with ``adapters`` (LRU of LoRA slots), ``auth`` (tenants), ``metrics``,
``quantize`` and ``protocol`` (OpenAI request/response models).
"""
