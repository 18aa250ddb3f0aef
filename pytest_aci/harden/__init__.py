"""``aci-harden``: random worst-insertion fine-tuning on the failures a test run found.

``config`` (methods and settings), ``train`` (the loop: draw insertion states, keep the worst for the
current model, train it to recover), ``data`` (the training prompts, spans and utility pool),
``examples`` (token-level training examples and their losses), ``checkpoint`` (resumable state, the
weights), ``validation`` (held-out checks while training and the best step they pick), ``evaluate``
(the before/after run).
"""
