"""The engine: a spec item turned into judged cases.

Insertion states (``states``) and the spans the model makes itself (``span_sources``), the Hypothesis searches
(``search``, ``strategies``) and their pool (``search_pool``), the depth sample, generation through the cache
(``generation``) and read further (``reading_further``), inference-time defences, judging (``judging``),
case records (``records``) and score mode (``harm_score``), wired together per session by ``runtime``. It
knows nothing of pytest: the pytest layer (``pytest_aci.plugin``) sits above it.
"""
