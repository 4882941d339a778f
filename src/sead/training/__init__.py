"""Layer 6, the glue around TRL's ``DistillationTrainer``: the config and what it builds (``config``: the loss's
spec, the schedules, the curriculum; and what becomes of every inherited TRL field: ``inherited``), every refusal
before the first step (``startup``), the trainer (``trainer``) and the models as its loss reads them
(``forwards``), several teachers (``teacher_set``), what a resumed run needs (``run_state``), where the frozen models live (``sharding``), non-finite
steps (``nonfinite``), graceful interruption (``interrupt``), and a YAML recipe made into a trainer (``recipe``).
The method's own parts of a step are :mod:`sead.components`.
Imports the layers below; not ``sead.evaluation`` or ``sead.plan`` (same layer).
"""
