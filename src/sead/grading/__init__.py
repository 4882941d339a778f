"""Layer 4, the verifier: answer extraction and normalisation (``answers``), time-bounded math-verify grading in
worker processes (``verifier``), the training rewards built on it (``rewards``), and the metrics over verdicts
(``metrics``: avg@k, pass@k). Imports the layers below.
"""
