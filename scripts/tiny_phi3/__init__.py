"""The parts of the tiny Phi-3 test-model scripts (``scripts/make_tiny_phi3.py``, ``scripts/make_tiny_phi3_128k.py``).

* ``common``: paths, Phi-3 ids and chat prompt, size limits, logging, warning capture, publishing.
* ``vocab_tests``: the llama.cpp vocabulary (from the llama-cpp-python sdist) and its test vectors.
* ``tokenizer``: the exact Phi-3 ``tokenizer.json`` rebuilt from that vocabulary.
* ``corpus``: standard-library docstrings and chat samples, the held-out split, the token stream.
* ``train``: the 4k model: init, training, evaluation, save and reload.
* ``report``: the README of ``pipeline/assets/tiny_phi3``.
* ``longrope``, ``train_128k``, ``report_128k``: the LongRoPE + GQA model derived from it.

The scripts run as ``python scripts/<name>.py``, so ``scripts/`` is on ``sys.path`` and this
package imports as ``tiny_phi3``.
"""
