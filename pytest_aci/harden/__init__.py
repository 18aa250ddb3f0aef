"""``aci-harden``: random worst-insertion fine-tuning on the failures a test run found.

``train`` (the loop: draw insertion states, keep the worst for the current model, train it to recover),
``data`` (the training prompts, spans and utility pool), ``checkpoint`` (resumable state, the best
step), ``validation`` (held-out checks while training), ``evaluate`` (the before/after run).
"""
