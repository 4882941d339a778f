"""Layer 1, the method math as pure functions over tensors, each with its formula (METHODS.md): divergences and
entropies (``divergences``), SEAD's token zones (``zones``: where the skip zone is decided), SG-OPD's sign gate
(``gates``), the anneal and teacher-mix schedules (``schedules``), the competence-gated curriculum
(``curriculum``), and a model's output transform before its logits (``logit_transforms``). Imports only
``sead.utils``.
"""
