"""The parts of the tiny test-model scripts (``scripts/make_tiny_phi3.py``, ``make_tiny_phi3_128k.py``, ``make_tiny_phi4.py``).

* ``common``: paths, Phi-3 ids and chat prompt, size limits, logging, warning capture, publishing.
* ``vocab_tests``: the llama.cpp vocabulary (from the llama-cpp-python sdist) and its test vectors.
* ``tokenizer``: the exact Phi-3 ``tokenizer.json`` rebuilt from that vocabulary.
* ``corpus``: standard-library docstrings and chat samples, the held-out split, the token stream.
* ``train``: the 4k model: init, training, evaluation, save and reload.
* ``report``: the README of ``pipeline/assets/tiny_phi3``.
* ``longrope``, ``train_128k``, ``report_128k``: the LongRoPE + GQA models derived from it, by shape
  (``longrope.SHAPES``: ``phi3_128k``, and ``phi4`` with head 128 and partial rotary 0.75, whose README
  template is ``report_phi4``).

The scripts run as ``python scripts/<name>.py``, so ``scripts/`` is on ``sys.path`` and this
package imports as ``tiny_phi3``.
"""
